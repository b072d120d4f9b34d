"""Errors of the models stage."""

from tuneserve.errors import UserError


class ModelError(UserError, ValueError):
    """A model reference that cannot be resolved, imported or read; the message says why."""
