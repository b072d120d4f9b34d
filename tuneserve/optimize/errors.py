"""Errors of the optimize stage."""


class OptimizeError(ValueError):
    """Bad input to an optimize command; the message names what and why."""
