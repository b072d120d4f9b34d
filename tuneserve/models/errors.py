"""Errors of the models stage."""


class ModelError(ValueError):
    """A model reference that cannot be resolved, imported or read; the message says why."""
