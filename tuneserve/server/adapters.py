"""The adapter registry: name -> current version, hot swap, and eviction that really evicts.

Each load gets a new engine id. New requests resolve a name to its current version; requests in
flight hold their version until they finish. A replaced or unloaded version is removed from the
engine (`remove_lora`) as soon as no request holds it, unlike vLLM's own unload endpoint, which
leaves the weights in the engine.
"""

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneserve.config import tuneserve_home
from tuneserve.engine import Engine
from tuneserve.server import metrics
from tuneserve.server.adapter_checks import AdapterError, AdapterInfo, ServedBase, check_adapter, check_name
from tuneserve.server.errors import ClientError
from tuneserve.server.snapshots import SnapshotDir, described_as, max_adapter_bytes

logger = logging.getLogger("tuneserve.server")


class AdapterNotFoundError(ClientError):
    status = 404
    code = "adapter_not_found"


class AdapterLoadError(AdapterError):
    code = "adapter_load_failed"


@dataclass(eq=False)
class AdapterVersion:
    name: str
    version: int
    lora_id: int
    info: AdapterInfo
    source: str = "api"  # how it came: "cli" (--adapter), "file" (--adapters-file) or "api" (admin API)
    loaded_at: float = field(default_factory=time.time)
    num_in_flight: int = 0
    is_retired: bool = False

    def lora_request(self) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"{self.name}@v{self.version}", self.lora_id, str(self.info.path))

    def describe(self) -> dict:
        return {
            "name": self.name, "version": self.version, "engine_id": self.lora_id,
            "path": str(self.info.source_path or self.info.path), "snapshot": str(self.info.path), "rank": self.info.rank, "target_modules": self.info.target_modules,
            "base_model": self.info.base_model, "source": self.source, "loaded_at": int(self.loaded_at), "in_flight": self.num_in_flight,
        }


def check_snapshot(snapshot: Path, path: Path, base: ServedBase, max_rank: int, force: bool = False) -> AdapterInfo:
    """Check a snapshot of `path` (blocking: reads every tensor); errors name `path`."""
    try:
        info = check_adapter(snapshot, base, max_rank, force)
    except AdapterError as e:
        raise described_as(e, snapshot, path) from None
    return dataclasses.replace(info, source_path=path)


class AdapterRegistry:
    def __init__(self, engine: Engine, base: ServedBase, max_rank: int, snapshots: SnapshotDir | None = None):
        self.engine = engine
        self.base = base
        self.max_rank = max_rank
        self.snapshots = snapshots or SnapshotDir(tuneserve_home() / "adapter-snapshots")
        self.max_weights_bytes = max_adapter_bytes(base.weight_shapes, max_rank)
        self.current: dict[str, AdapterVersion] = {}
        self.retired: set[AdapterVersion] = set()  # replaced or unloaded, still serving requests in flight
        self._ids = itertools.count(1)
        self._versions: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._name_locks: dict[str, asyncio.Lock] = {}


    async def load(self, name: str, path: Path, force: bool = False, source: str = "api", info: AdapterInfo | None = None) -> AdapterVersion:
        """Load `path` as `name`; a new version if the name exists. On failure the old one serves on.
        Loads of one name run one after another, so the last one asked for is the one that serves.
        `info`: already prepared (start-up prepares --adapter before the engine starts)."""
        check_name(name, self.base)
        async with self._name_locks.setdefault(name, asyncio.Lock()):
            if info is None:
                # Copying and checking every tensor takes a while for big adapters: keep the loop serving.
                snapshot = await asyncio.to_thread(self.snapshots.take, path, self.max_weights_bytes)
                try:
                    info = await asyncio.to_thread(check_snapshot, snapshot, path, self.base, self.max_rank, force)
                except BaseException:
                    self._release(snapshot)
                    raise
            try:
                version = await self._add(name, info, source)
            except BaseException:
                self._release(info.path)
                raise
        metrics.ADAPTERS_LOADED.set(len(self.current))
        logger.info("adapter %s v%d loaded from %s (engine id %d)", name, version.version, info.source_path or info.path, version.lora_id)
        return version

    async def _add(self, name: str, info: AdapterInfo, source: str) -> AdapterVersion:
        async with self._lock:
            version = AdapterVersion(name, self._versions.get(name, 0) + 1, next(self._ids), info, source)
            try:
                is_added = await self.engine.add_lora(version.lora_request())
            except Exception as e:  # the engine's own words: this is the admin API, and they help
                logger.warning("engine rejected adapter %s: %s", name, e)
                raise AdapterLoadError(f"the engine rejected adapter {name!r}: {str(e)[:300]}", param="path") from None
            if not is_added:
                raise AdapterLoadError(f"the engine could not load adapter {name!r}", param="path")
            self._versions[name] = version.version
            previous = self.current.get(name)
            self.current[name] = version
            if previous is not None:
                metrics.ADAPTER_SWAPS.inc()
                await self._retire(previous)
        return version

    async def unload(self, name: str) -> AdapterVersion:
        async with self._lock:
            version = self.current.pop(name, None)
            if version is None:
                raise AdapterNotFoundError(f"no adapter named {name!r} is loaded", param="name")
            await self._retire(version)
        metrics.ADAPTERS_LOADED.set(len(self.current))
        return version

    def get(self, name: str) -> AdapterVersion:
        if name not in self.current:
            raise AdapterNotFoundError(f"no adapter named {name!r} is loaded", param="name")
        return self.current[name]

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[AdapterVersion]:
        """Pin the current version of `name` for one request."""
        version = self.get(name)
        version.num_in_flight += 1
        try:
            yield version
        finally:
            version.num_in_flight -= 1
            if version.is_retired and version.num_in_flight == 0:
                await self._evict(version)

    async def _retire(self, version: AdapterVersion) -> None:
        version.is_retired = True
        self.retired.add(version)
        if version.num_in_flight == 0:
            await self._evict(version)

    async def _evict(self, version: AdapterVersion) -> None:
        self.retired.discard(version)
        try:
            await self.engine.remove_lora(version.lora_id)
        except Exception:  # an engine that cannot evict is an engine /health will report
            logger.exception("could not remove adapter %s v%d from the engine", version.name, version.version)
            return
        self._release(version.info.path)
        metrics.ADAPTER_EVICTIONS.inc()
        logger.info("adapter %s v%d evicted (engine id %d)", version.name, version.version, version.lora_id)

    def _release(self, snapshot: Path) -> None:
        in_use = {v.info.path for v in [*self.current.values(), *self.retired]}
        self.snapshots.release(snapshot, in_use)
