"""One base for what the user got wrong: a flag, a file, a recipe, a model reference, a server URL.

Every stage raises a `UserError` subclass with a message that names the bad field (its YAML key,
which is also its flag without dashes) and never a traceback's worth of internals; the CLI prints
the message as one line and exits 2 (tuneserve/cli.py). The server's request errors have their own
tree (server/errors.py): they become HTTP statuses, not exit codes.
"""


class UserError(Exception):
    """Bad input from the user; the message is what they need to fix it."""


class StartupError(UserError):
    """The server cannot start; the message names the cause and the flag or command that fixes it."""


class ArtifactExistsError(UserError, FileExistsError):
    """An output directory that exists, written without overwrite."""
