"""`--adapters-file`: adapters declared in a file that the server keeps itself in line with.

    adapters:
      dates: /adapters/dates             # name -> adapter directory
      support:
        path: /adapters/support
        version: "2026-11-27"            # change it to reload the same path (new files, same place)
        pinned: true                     # keep an engine slot: never evicted at any tier

The server reconciles at start and whenever the file's content changes (polled, so that a
Kubernetes ConfigMap, which is swapped in through a symlink, is seen like any edit): new entries
load, changed ones hot-swap, removed ones unload and leave the engine. Every load goes through
the registry, so through the admin API's checks. A broken entry is reported (log, the
`tuneserve_adapters_file_errors` metric, `GET /v1/adapters`), retried now and then, and leaves
the rest serving; if it was serving before, its previous version serves on. A file that does not
parse changes nothing. Relative paths are relative to the file.
"""

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneserve.config import describe_validation_error
from tuneserve.server import metrics
from tuneserve.server.adapters import AdapterRegistry
from tuneserve.server.errors import TuneserveError

logger = logging.getLogger("tuneserve.server")

RETRY_BROKEN_S = 30.0  # a broken entry is tried again this often (its files may still be syncing)
SETTLE_S = 0.25  # new content is applied only if it reads the same again after this: never a half-written file


class AdapterEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Adapter directory (relative paths are relative to the adapters file).")
    version: str | None = Field(None, description="Any label; changing it reloads the adapter from the same path.")
    force: bool = Field(False, description="Load even if it was trained on another base model.")
    pinned: bool = Field(False, description="Keep an engine slot and vLLM's adapter cache entry: never evicted at any "
                         "tier (at most --max-loras minus one adapters are pinned).")

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v):
        return None if v is None else str(v)


class AdaptersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Required, so that an empty (or half-written) file never reads as "unload everything".
    adapters: dict[str, AdapterEntry] = Field(description="Adapter name -> entry (or just its path); {} for none.")

    @field_validator("adapters", mode="before")
    @classmethod
    def _paths_as_entries(cls, v):
        if isinstance(v, dict):
            return {name: {"path": entry} if isinstance(entry, str) else entry for name, entry in v.items()}
        return {} if v is None else v


class AdaptersFileError(ValueError):
    """The file cannot be read or does not validate; the message names the bad field."""


def read_adapters_file(path: Path) -> tuple[str, dict[str, AdapterEntry]]:
    """(sha256 of the content, name -> entry with an absolute path)."""
    try:
        content = path.read_bytes()
    except OSError as e:
        raise AdaptersFileError(f"{path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(content)
        if data is None:
            raise AdaptersFileError(f"{path}: the file is empty; declare no adapters with `adapters: {{}}`")
        declared = AdaptersFile.model_validate(data)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        raise AdaptersFileError(f"{path}: not valid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    except ValidationError as e:
        raise AdaptersFileError(describe_validation_error(e, path).replace("\n", "; ")) from None
    base_dir = path.parent
    entries = {
        name: entry.model_copy(update={"path": str((base_dir / Path(entry.path).expanduser()).resolve())})
        for name, entry in declared.adapters.items()
    }
    return hashlib.sha256(content).hexdigest(), entries


@dataclass
class AdaptersFileWatcher:
    """Keeps the registry in line with the file; `status()` is what `GET /v1/adapters` shows."""

    path: Path
    registry: AdapterRegistry
    poll_s: float = 2.0
    digest: str | None = None  # of the content last reconciled
    applied: dict[str, AdapterEntry] = field(default_factory=dict)  # what is loaded from the file
    errors: dict[str, str] = field(default_factory=dict)  # name -> why its entry is not served as declared
    file_error: str | None = None
    reconciled_at: float | None = None
    _declared: dict[str, AdapterEntry] = field(default_factory=dict)
    _retry_at: float = 0.0

    async def run(self) -> None:
        """Poll the file until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except Exception:  # the watcher must outlive any one bad round
                logger.exception("adapters file %s: reconcile failed", self.path)

    async def check(self) -> None:
        """Reconcile if the content changed, or if broken entries are due for another try."""
        try:
            digest, declared = await asyncio.to_thread(read_adapters_file, self.path)
            if digest != self.digest and self.digest is not None:  # still being written? read it again
                await asyncio.sleep(SETTLE_S)
                if (await asyncio.to_thread(read_adapters_file, self.path))[0] != digest:
                    return
        except AdaptersFileError as e:
            if str(e) != self.file_error:
                logger.error("adapters file: %s; keeping the adapters loaded now", e)
                metrics.ADAPTERS_FILE_RECONCILES.labels("file_error").inc()
            self.file_error = str(e)
            return
        self.file_error = None
        if digest != self.digest:
            logger.info("adapters file %s changed: reconciling %d entries", self.path, len(declared))
            await self.reconcile(digest, declared)
        elif self.errors and time.monotonic() >= self._retry_at:
            await self.reconcile(digest, declared)

    async def reconcile(self, digest: str, declared: dict[str, AdapterEntry]) -> None:
        self._declared = declared
        for name in [n for n in self.applied if n not in declared]:
            await self._remove(name)
        for name in [n for n in self.errors if n not in declared]:
            self._clear_error(name)
        for name, entry in declared.items():
            if self.applied.get(name) != entry or name in self.errors:
                await self._apply(name, entry)
        self.digest = digest
        self.reconciled_at = time.time()
        self._retry_at = time.monotonic() + RETRY_BROKEN_S
        metrics.ADAPTERS_FILE_RECONCILES.labels("error" if self.errors else "ok").inc()

    async def _apply(self, name: str, entry: AdapterEntry) -> None:
        is_swap = name in self.registry.current
        try:
            version = await self.registry.load(name, Path(entry.path), entry.force, source="file", pinned=entry.pinned)
        except TuneserveError as e:
            self._set_error(name, e.message)
            return
        except Exception as e:  # the file must never take the server down; the engine's own words help
            self._set_error(name, f"{type(e).__name__}: {str(e)[:300]}")
            return
        self.applied[name] = entry
        self._clear_error(name)
        logger.info("adapters file: %s %s (v%d)", "swapped" if is_swap else "loaded", name, version.version)

    async def _remove(self, name: str) -> None:
        del self.applied[name]
        version = self.registry.current.get(name)
        if version is not None and version.source == "file":  # an admin-API load since is not ours to remove
            await self.registry.unload(name)
            logger.info("adapters file: unloaded %s (no longer declared)", name)

    def _set_error(self, name: str, message: str) -> None:
        if self.errors.get(name) != message:
            serving = " (its previous version serves on)" if name in self.registry.current else ""
            logger.error("adapters file: entry %r not loaded: %s%s", name, message, serving)
        self.errors[name] = message
        metrics.ADAPTERS_FILE_ERRORS.labels(name).set(1)

    def _clear_error(self, name: str) -> None:
        if self.errors.pop(name, None) is not None:
            metrics.ADAPTERS_FILE_ERRORS.remove(name)

    def status(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.digest,
            "reconciled_at": None if self.reconciled_at is None else int(self.reconciled_at),
            "declared": sorted(self._declared),
            "errors": dict(sorted(self.errors.items())),
            "file_error": self.file_error,
        }
