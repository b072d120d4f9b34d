"""Adapters are served from what was validated: a load first copies the adapter's files into this
server's content-addressed snapshot directory, then checks the copy, and the engine reads the copy.

vLLM reloads an adapter from its path whenever it evicts it from its own caches, so a file changed
in place after the check would otherwise be served unchecked. Copies are size-capped before a byte
is written (the largest adapter of the server's maximum rank for this model), devices and FIFOs are
refused without blocking, and snapshots no adapter version uses any more are deleted.
"""

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from tuneserve.server.adapter_checks import MAX_CONFIG_BYTES, AdapterError, shown

CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE = "adapter_config.json", "adapter_model.safetensors", "tuneserve.json"
CHUNK = 1 << 20


def max_adapter_bytes(weight_shapes: dict[str, list[int]], max_rank: int) -> int:
    """The largest a LoRA of rank `max_rank` on every layer can be (float64, header room)."""
    return sum(max_rank * (out + inp) * 8 for out, inp in (s for s in weight_shapes.values() if len(s) == 2)) + (1 << 20)


class SnapshotDir:
    """This server's snapshots: <root>/<sha256 of the files>/, removed with the server."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        _remove_orphans(root)
        self.path = Path(tempfile.mkdtemp(prefix=f"server-{os.getpid()}-", dir=root))

    def take(self, source: Path, max_weights_bytes: int) -> Path:
        """Copy the adapter's files (those that exist) into a new snapshot; returns its directory.
        A snapshot with the same content is reused."""
        try:
            return self._take(source, max_weights_bytes)
        except OSError as e:  # a name too long, an I/O error: the adapter's fault, not the server's
            raise AdapterError(f"cannot read adapter {shown(source)}: {e.strerror or e}", param="path") from None

    def _take(self, source: Path, max_weights_bytes: int) -> Path:
        if not source.is_dir():
            raise AdapterError(f"adapter directory {shown(source)} does not exist", param="path")
        staging = Path(tempfile.mkdtemp(prefix="staging-", dir=self.path))
        try:
            digest = hashlib.sha256()
            for name, limit in ((CONFIG_FILE, MAX_CONFIG_BYTES), (MANIFEST_FILE, MAX_CONFIG_BYTES), (WEIGHTS_FILE, max_weights_bytes)):
                if (source / name).exists():
                    digest.update(name.encode() + b"\0")
                    _copy_regular_file(source / name, staging / name, limit, digest)
            final = self.path / digest.hexdigest()
            if final.exists():
                shutil.rmtree(staging)
            else:
                staging.rename(final)
            return final
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def release(self, snapshot: Path, in_use: set[Path]) -> None:
        """Delete a snapshot no adapter version uses any more."""
        if snapshot.parent == self.path and snapshot not in in_use:
            shutil.rmtree(snapshot, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_orphans(root: Path) -> None:
    """Snapshots of servers that are gone (killed before they could remove their own)."""
    for path in root.glob("server-*-*"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _copy_regular_file(source: Path, target: Path, max_bytes: int, digest) -> None:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise AdapterError(f"cannot read {shown(source)}: {e.strerror or e}", param="path") from None
    with os.fdopen(fd, "rb") as f, open(target, "wb") as out:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AdapterError(f"{shown(source)} is not a regular file", param="path")
        size = 0
        while chunk := f.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise AdapterError(f"{shown(source)} is larger than {max_bytes} bytes, the most an adapter of this "
                                   "server's --max-lora-rank can take for this model", param="path")
            digest.update(chunk)
            out.write(chunk)


def described_as(error: AdapterError, snapshot: Path, source: Path) -> AdapterError:
    """The error a check of the snapshot raised, naming the adapter's own directory instead."""
    with contextlib.suppress(Exception):
        error.message = error.message.replace(str(snapshot), str(source))
        error.args = (error.message,)
    return error
