"""The adapter registry: name -> current version, hot swap, loads on first use, and eviction that
really evicts.

Each load gets a new engine id. New requests resolve a name to its current version; requests in
flight hold their version until they finish. A replaced or unloaded version is removed from the
engine (`remove_lora`) as soon as no request holds it, unlike vLLM's own unload endpoint, which
leaves the weights in the engine.

Tiers: the engine's step (`--max-loras` adapters at once) and its adapter cache (`--max-cpu-loras`,
least recently used out; vLLM reloads an evicted one from its checked snapshot on its next request)
are vLLM's; the disk tier is this registry's. An adapter a request names that is not loaded, but
that a source can provide (adapter_sources.py), is loaded on first use; several first requests
for it wait for one load. Past `--adapter-disk-gib` of snapshots, the least recently used adapter
that was loaded on first use and serves no request is unloaded; adapters loaded by flag, file or
admin API stay until unloaded. A pinned adapter (`pinned: true` in the file or the admin load)
keeps an engine slot and its place in vLLM's adapter cache (vLLM's `pin_lora`): never evicted at
any tier. At most `--max-loras` minus one may be pinned, so that a slot always remains for the rest.
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
from tuneserve.server.adapter_sources import fetch, is_resolvable, prune_cache, source_kind
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
    source: str = "api"  # how it came: "cli" (--adapter), "file" (--adapters-file), "api" (admin API), "jit" (first use)
    is_pinned: bool = False  # kept in an engine slot and vLLM's adapter cache (pin_lora)
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    num_in_flight: int = 0
    is_retired: bool = False

    @property
    def is_evictable(self) -> bool:
        """May be unloaded to make room on disk: loaded on first use, not pinned."""
        return self.source == "jit" and not self.is_pinned

    def lora_request(self) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"{self.name}@v{self.version}", self.lora_id, str(self.info.path))

    def describe(self) -> dict:
        return {
            "name": self.name, "version": self.version, "engine_id": self.lora_id,
            "path": str(self.info.source_path or self.info.path), "snapshot": str(self.info.path), "rank": self.info.rank, "target_modules": self.info.target_modules,
            "base_model": self.info.base_model, "source": self.source, "pinned": self.is_pinned, "loaded_at": int(self.loaded_at),
            "in_flight": self.num_in_flight, "snapshot_bytes": self.info.num_bytes,
        }


def check_snapshot(snapshot: Path, path: Path, base: ServedBase, max_rank: int, force: bool = False) -> AdapterInfo:
    """Check a snapshot of `path` (blocking: reads every tensor); errors name `path`."""
    try:
        info = check_adapter(snapshot, base, max_rank, force)
    except AdapterError as e:
        raise described_as(e, snapshot, path) from None
    num_bytes = sum(f.stat().st_size for f in snapshot.iterdir() if f.is_file())
    return dataclasses.replace(info, source_path=path, num_bytes=num_bytes)


class AdapterRegistry:
    def __init__(self, engine: Engine, base: ServedBase, max_rank: int, snapshots: SnapshotDir | None = None,
                 roots: list[Path] = (), cache_dir: Path | None = None, max_disk_bytes: int | None = None,
                 url_prefixes: list[str] = (), max_pinned: int = 0):
        self.engine = engine
        self.base = base
        self.max_rank = max_rank
        self.snapshots = snapshots or SnapshotDir(tuneserve_home() / "adapter-snapshots")
        self.max_weights_bytes = max_adapter_bytes(base.weight_shapes, max_rank)
        self.roots = [Path(r) for r in roots]
        self.url_prefixes = list(url_prefixes)
        self.max_pinned = max_pinned
        self.cache_dir = cache_dir or tuneserve_home() / "adapter-cache"
        self.max_disk_bytes = max_disk_bytes
        self.current: dict[str, AdapterVersion] = {}
        self.retired: set[AdapterVersion] = set()  # replaced or unloaded, still serving requests in flight
        self._ids = itertools.count(1)
        self._versions: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._name_locks: dict[str, asyncio.Lock] = {}

    def is_known(self, name: str) -> bool:
        """Loaded, or loadable on first use (a URL outside --adapter-url-prefix raises)."""
        return name in self.current or is_resolvable(name, self.roots, self.url_prefixes)

    async def load(self, name: str, path: Path, force: bool = False, source: str = "api", info: AdapterInfo | None = None,
                   pinned: bool = False) -> AdapterVersion:
        """Load `path` as `name`; a new version if the name exists. On failure the old one serves on.
        Loads of one name run one after another, so the last one asked for is the one that serves.
        `info`: already prepared (start-up prepares --adapter before the engine starts)."""
        check_name(name, self.base)
        async with self._name_locks.setdefault(name, asyncio.Lock()):
            return await self._load(name, path, force, source, info, pinned)

    async def _load(self, name: str, path: Path, force: bool, source: str, info: AdapterInfo | None, pinned: bool) -> AdapterVersion:
        if info is None:
            # Copying and checking every tensor takes a while for big adapters: keep the loop serving.
            snapshot = await asyncio.to_thread(self.snapshots.take, path, self.max_weights_bytes)
            try:
                info = await asyncio.to_thread(check_snapshot, snapshot, path, self.base, self.max_rank, force)
            except BaseException:
                self._release(snapshot)
                raise
        try:
            await self._make_room(info.num_bytes)
            version = await self._add(name, info, source, pinned)
        except BaseException:
            self._release(info.path)
            raise
        metrics.ADAPTERS_LOADED.set(len(self.current))
        logger.info("adapter %s v%d loaded from %s (engine id %d)", name, version.version, info.source_path or info.path, version.lora_id)
        return version

    async def load_on_first_use(self, name: str) -> AdapterVersion:
        """`name` from its source, once however many requests ask for it at the same time."""
        async with self._name_locks.setdefault(name, asyncio.Lock()):
            if name in self.current:  # another request loaded it while this one waited
                return self.current[name]
            started = time.monotonic()
            kind = source_kind(name)
            try:
                path = await asyncio.to_thread(fetch, name, self.roots, self.cache_dir, self.max_weights_bytes, self.base.path, self.url_prefixes)
                version = await self._load(name, path, False, "jit", None, pinned=False)
            except BaseException:
                self._name_locks.pop(name, None)  # names that never load leave nothing behind
                raise
        metrics.ADAPTER_LOAD_SECONDS.labels(kind).observe(time.monotonic() - started)
        if kind in ("url", "merge") and self.max_disk_bytes is not None:
            await asyncio.to_thread(prune_cache, self.cache_dir, self.max_disk_bytes)
        return version

    async def _add(self, name: str, info: AdapterInfo, source: str, pinned: bool = False) -> AdapterVersion:
        async with self._lock:
            num_pinned = sum(v.is_pinned for n, v in self.current.items() if n != name)
            if pinned and num_pinned >= self.max_pinned:
                raise AdapterLoadError(f"cannot pin adapter {name!r}: {num_pinned} are pinned, the most this server allows "
                                       f"(--max-loras minus one, so that a slot remains for the rest)", param="pinned")
            version = AdapterVersion(name, self._versions.get(name, 0) + 1, next(self._ids), info, source, pinned)
            try:
                is_added = await self.engine.add_lora(version.lora_request())
            except Exception as e:  # the engine's own words: this is the admin API, and they help
                logger.warning("engine rejected adapter %s: %s", name, e)
                raise AdapterLoadError(f"the engine rejected adapter {name!r}: {str(e)[:300]}", param="path") from None
            if not is_added:
                raise AdapterLoadError(f"the engine could not load adapter {name!r}", param="path")
            if pinned:
                await self.engine.pin_lora(version.lora_id)
            self._versions[name] = version.version
            metrics.ADAPTER_LOADS.labels(source).inc()
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
    async def hold(self, name: str, load_if_missing: bool = False) -> AsyncIterator[AdapterVersion]:
        """Pin the current version of `name` for one request (loading it first, if asked and missing)."""
        if name in self.current or not load_if_missing:
            version = self.get(name)
            metrics.ADAPTER_LOOKUPS.labels(name, "hit").inc()
        else:
            version = await self.load_on_first_use(name)
            metrics.ADAPTER_LOOKUPS.labels(name, "miss").inc()
        version.num_in_flight += 1  # no await since the lookup: nothing can evict it in between
        version.last_used = time.monotonic()
        try:
            yield version
        finally:
            version.num_in_flight -= 1
            if version.is_retired and version.num_in_flight == 0:
                await self._evict(version)

    async def refresh_resident(self) -> None:
        """The tuneserve_adapter_resident gauge, as of now (called when /metrics is read)."""
        in_engine = await self.engine.list_loras()
        metrics.ADAPTERS_RESIDENT.clear()
        for name, version in self.current.items():
            metrics.ADAPTERS_RESIDENT.labels(name, "disk").set(1)
            metrics.ADAPTERS_RESIDENT.labels(name, "engine").set(int(version.lora_id in in_engine))

    async def _make_room(self, num_bytes: int) -> None:
        """Unload idle adapters loaded on first use, least recently used first, until `num_bytes` more fit the disk budget."""
        if self.max_disk_bytes is None:
            return
        used = sum(v.info.num_bytes for v in self.current.values())
        idle = sorted((v for v in self.current.values() if v.is_evictable and v.num_in_flight == 0), key=lambda v: v.last_used)
        for version in idle:
            if used + num_bytes <= self.max_disk_bytes:
                break
            logger.info("adapter %s unloaded to make room on disk (least recently used)", version.name)
            metrics.ADAPTER_DISK_EVICTIONS.inc()
            used -= version.info.num_bytes
            await self.unload(version.name)

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
