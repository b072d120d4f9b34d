"""The adapter registry's bookkeeping where only a fake engine can produce the fault."""

import asyncio
import time

import pytest

from tests.helpers import ADAPTERS, MODEL
from tests.server.fake_engine import FakeEngine
from tuneserve.models import resolve_model
from tuneserve.server.adapters import AdapterLoadError, AdapterRegistry
from tuneserve.server.main import served_base


@pytest.fixture(scope="module")
def base():
    return served_base([MODEL], resolve_model(MODEL))


def test_engine_refusing_a_swap_leaves_the_old_version_serving(base):
    async def scenario():
        engine = FakeEngine()
        registry = AdapterRegistry(engine, base, max_rank=16)
        v1 = await registry.load("a", ADAPTERS["dates"])
        engine.fault = "add_lora"
        with pytest.raises(AdapterLoadError, match="the engine rejected adapter 'a': Call to add_lora"):
            await registry.load("a", ADAPTERS["units"])
        assert registry.get("a") is v1 and engine.loras == {v1.lora_id}

    asyncio.run(scenario())


def test_a_replaced_version_leaves_the_engine_when_its_last_request_ends(base):
    async def scenario():
        engine = FakeEngine()
        registry = AdapterRegistry(engine, base, max_rank=16)
        v1 = await registry.load("a", ADAPTERS["dates"])
        async with registry.hold("a") as held:
            v2 = await registry.load("a", ADAPTERS["units"])
            assert held is v1 and engine.loras == {v1.lora_id, v2.lora_id}  # v1 still busy
        assert engine.loras == {v2.lora_id}
        await registry.unload("a")
        assert engine.loras == set()

    asyncio.run(scenario())


def test_concurrent_loads_of_one_name_end_with_the_last_one_asked_for(base, monkeypatch):
    """Two loads of one name: the first one's (slower) check used to finish last and win."""
    from tuneserve.server import adapters

    check = adapters.check_snapshot

    def slow_for_dates(snapshot, path, *args, **kwargs):
        if path == ADAPTERS["dates"]:
            time.sleep(0.5)
        return check(snapshot, path, *args, **kwargs)

    monkeypatch.setattr(adapters, "check_snapshot", slow_for_dates)

    async def scenario():
        registry = AdapterRegistry(FakeEngine(), base, max_rank=16)
        first = asyncio.create_task(registry.load("a", ADAPTERS["dates"]))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, registry.load("a", ADAPTERS["units"]))
        assert registry.get("a").info.source_path == ADAPTERS["units"]

    asyncio.run(scenario())


def test_an_adapter_is_served_from_the_checked_snapshot_and_the_snapshot_goes_with_it(base, tmp_path):
    import shutil

    source = tmp_path / "a"
    shutil.copytree(ADAPTERS["dates"], source)

    async def scenario():
        registry = AdapterRegistry(FakeEngine(), base, max_rank=16)
        version = await registry.load("a", source)
        snapshot = version.info.path
        assert version.lora_request().lora_path == str(snapshot) and snapshot.parent == registry.snapshots.path
        (source / "adapter_model.safetensors").write_bytes(b"changed in place after the check")
        assert (snapshot / "adapter_model.safetensors").read_bytes() == (ADAPTERS["dates"] / "adapter_model.safetensors").read_bytes()
        await registry.unload("a")
        assert not snapshot.exists()

    asyncio.run(scenario())


def test_start_up_adapters_are_checked_once(base, monkeypatch):
    """--adapter is snapshotted and checked before the engine starts; loading it then reads no tensor again."""
    from tuneserve.server import adapters
    from tuneserve.server.startup import prepare_adapters

    registry = AdapterRegistry(FakeEngine(), base, max_rank=16)
    prepared = prepare_adapters({"dates": str(ADAPTERS["dates"])}, base, 16, registry.snapshots)
    monkeypatch.setattr(adapters, "check_snapshot", lambda *a, **k: pytest.fail("checked twice"))
    version = asyncio.run(registry.load("dates", ADAPTERS["dates"], info=prepared["dates"]))
    assert version.info is prepared["dates"]


def test_past_the_disk_budget_the_least_recently_used_idle_adapter_loaded_on_first_use_goes(base, tmp_path):
    import shutil

    root = tmp_path / "root"
    for name in "abcde":
        shutil.copytree(ADAPTERS["dates"], root / name)
    size = sum(f.stat().st_size for f in (root / "a").iterdir() if f.is_file() and f.name != "README.md")

    async def use(registry, name):
        async with registry.hold(name, load_if_missing=True):
            pass

    async def scenario():
        engine = FakeEngine()
        registry = AdapterRegistry(engine, base, max_rank=16, roots=[root], max_disk_bytes=int(size * 4.5), max_pinned=1)
        await registry.load("declared", ADAPTERS["units"])  # an admin-API load: stays until unloaded
        await registry.load("e", root / "e", pinned=True)  # pinned: in the engine's slot and cache too
        for name in "abc":
            await use(registry, name)
        assert set(registry.current) == {"declared", "e", "b", "c"}  # a, the least recently used, made room for c
        async with registry.hold("b"):  # b is busy: d takes c's place, not b's
            await use(registry, "d")
        assert set(registry.current) == {"declared", "e", "b", "d"}
        assert registry.get("d").source == "jit" and registry.get("d").is_evictable and not registry.get("declared").is_evictable
        assert engine.pinned == {registry.get("e").lora_id}
        with pytest.raises(AdapterLoadError, match="--max-loras minus one"):  # no slot left for the rest otherwise
            await registry.load("also-pinned", ADAPTERS["dates"], pinned=True)
        assert "also-pinned" not in registry.current
        new_e = await registry.load("e", root / "e", pinned=True)  # a hot swap of the pinned one stays pinned
        assert engine.pinned == {new_e.lora_id}  # the old version left the engine, pin and all

    asyncio.run(scenario())
