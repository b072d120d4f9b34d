"""tuneserve's grouped LoRA ops in the real engine, against vLLM's own CPU ops (`--lora-kernels
vllm`): two float32 servers, both committed adapters and the base model in mixed batches, with
every LoRA slot full (`--max-loras 2`)."""

import asyncio

import openai
import pytest

from tests.conftest import start_server
from tests.helpers import ADAPTERS, MODEL
from tests.server.test_adapters import PROMPTS
from tuneserve.server.process import stop_server

# Two float32 servers (~90 s): `make test-slow`. In `make test` the ops are checked against vLLM's
# own in tests/models/test_lora_kernels.py, and every adapter test on the session server runs them.
pytestmark = pytest.mark.slow
MODELS = [MODEL, "dates", "units"]


async def _answers(base_url: str) -> tuple[dict, dict]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)

    async def one(model, prompt):
        response = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24
        )
        return response.choices[0].message.content

    alone = {(MODEL, p): await one(MODEL, p) for p in PROMPTS}  # the base model on its own
    pairs = [(m, p) for m in MODELS for p in PROMPTS]
    together = dict(zip(pairs, await asyncio.gather(*(one(m, p) for m, p in pairs)), strict=True))  # mixed steps
    return alone, together


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Per --lora-kernels choice: (base answers alone, every answer in mixed batches, server log)."""
    found = {}
    adapters = [arg for name, path in ADAPTERS.items() for arg in ("--adapter", f"{name}={path}")]
    for kernels in ("vllm", "tuneserve"):
        server = start_server(tmp_path_factory.mktemp(kernels), "--dtype", "float32", "--max-loras", "2",
                              "--lora-kernels", kernels, *adapters)
        try:
            found[kernels] = (*asyncio.run(_answers(server.base_url)), server)
        finally:
            stop_server(server)
    return found


def test_both_adapters_answer_exactly_as_with_vllms_ops(runs):
    _, vllm_answers, _ = runs["vllm"]
    _, ours, _ = runs["tuneserve"]
    for model in ("dates", "units"):
        for prompt in PROMPTS:
            assert ours[(model, prompt)] == vllm_answers[(model, prompt)], (model, prompt)
    assert ours[("dates", PROMPTS[0])].strip() == "2001-03-03"  # the adapter really applied


def test_base_requests_in_a_step_with_every_slot_full_get_no_adapter_delta(runs):
    """vLLM 0.32's CPU ops give rows without an adapter the last slot's delta (slot -1); with
    --max-loras 2 and both adapters active that slot is `units`. tuneserve's ops give the base
    model's own answers."""
    alone, together, _ = runs["tuneserve"]
    assert all(together[(MODEL, p)] == alone[(MODEL, p)] for p in PROMPTS), (alone, together)


def test_the_log_names_the_lora_ops_in_use(runs):
    assert "multi-LoRA ops: tuneserve's grouped GEMMs" in runs["tuneserve"][2].log_path.read_text()
    vllm_log = runs["vllm"][2].log_path.read_text()
    assert "multi-LoRA ops: vLLM's own" in vllm_log and "grouped GEMMs" not in vllm_log
