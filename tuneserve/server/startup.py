"""Checks that run before the engine starts, so that a start-up failure is one line that names
the cause and the fix (the full traceback only with --log-level debug)."""

import errno
import ipaddress
import logging
import socket
from pathlib import Path

from tuneserve.config import describe_validation_error
from tuneserve.errors import StartupError
from tuneserve.server.adapter_checks import check_name
from tuneserve.server.adapters import check_snapshot
from tuneserve.server.adapters_file import AdaptersFileError, read_adapters_file
from tuneserve.server.auth import Authenticator, KeysFile
from tuneserve.server.errors import TuneserveError
from tuneserve.server.snapshots import max_adapter_bytes

logger = logging.getLogger("tuneserve.server")




def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now (before minutes of engine start-up), and hand it to uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use; pass another --port (or stop the other server)") from None
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise StartupError(f"cannot bind {host}: no such address on this machine; check --host") from None
        if e.errno == errno.EACCES:
            raise StartupError(f"permission denied binding port {port}; ports below 1024 need privileges, pass another --port") from None
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}; check --host and --port") from None
    except socket.gaierror:
        sock.close()
        raise StartupError(f"cannot resolve --host {host!r}") from None
    return sock


def load_keys(api_key: str | None, api_keys_file: str | None):
    """The Authenticator, or a StartupError that names the bad entry and never shows a key."""
    import yaml
    from pydantic import ValidationError


    if api_keys_file is None:
        return Authenticator.from_specs(api_key, [])
    path = Path(api_keys_file)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise StartupError(f"--api-keys {path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        # PyYAML's own message quotes the offending line, which may hold a key: say only where.
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StartupError(f"--api-keys {path}: not valid YAML{where}") from None
    try:
        keys = KeysFile.model_validate(data or {})
    except ValidationError as e:  # messages and field paths only: pydantic's input values are not shown
        raise StartupError(f"--api-keys {path}: " + describe_validation_error(e).replace("\n", "; ")) from None
    try:
        return Authenticator.from_specs(api_key, keys.keys)
    except ValueError as e:  # a keys-file tenant named like the --api-key one
        raise StartupError(f"--api-keys {path}: {e} (the --api-key tenant is named 'api-key')") from None


def prepare_adapters(adapters: dict[str, str], base, max_rank: int, snapshots) -> dict:
    """Every --adapter NAME=PATH snapshotted and checked as the admin API does, before the engine
    starts (the registry then loads these same checked copies)."""

    prepared = {}
    for name, path in adapters.items():
        source = Path(path).expanduser().resolve()
        try:
            check_name(name, base)
            snapshot = snapshots.take(source, max_adapter_bytes(base.weight_shapes, max_rank))
            prepared[name] = check_snapshot(snapshot, source, base, max_rank)
        except TuneserveError as e:
            raise StartupError(f"--adapter {name}={path}: {e.message}") from None
    return prepared


def check_adapters_file(path: str | None) -> None:
    """The file must exist and validate at start; a bad entry later only skips that entry."""

    if path is not None:
        try:
            read_adapters_file(Path(path).expanduser())
        except AdaptersFileError as e:
            raise StartupError(f"--adapters-file {e}") from None


def warn_if_exposed(host: str, has_keys: bool) -> None:
    if not has_keys and not is_loopback(host):
        logger.warning(
            "listening on %s without API keys: anyone who can reach this address can use the server and its admin "
            "API; pass --api-key or --api-keys", host,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
