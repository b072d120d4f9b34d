"""The adapter registry's bookkeeping where only a fake engine can produce the fault."""

import asyncio

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
