"""Errors of the optimize stage."""

from tuneserve.errors import UserError


class OptimizeError(UserError, ValueError):
    """Bad input to an optimize command; the message names what and why."""
