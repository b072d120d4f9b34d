"""Errors of the bench stage."""

from tuneserve.errors import UserError


class BenchError(UserError, ValueError):
    """A bench input (a rule, a result file, a workload) that cannot be used; the message names it."""
