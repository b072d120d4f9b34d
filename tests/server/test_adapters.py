"""Multi-LoRA serving on the real engine: per-request adapters, no cross-talk, hot swap, eviction."""

import asyncio
import shutil
import threading
import time

import openai
import pytest

from tests.helpers import ADMIN_KEY, MODEL, assert_openai_error, assert_still_serving

pytestmark = pytest.mark.engine

DATE_PROMPT = "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only."
PROMPTS = [
    DATE_PROMPT,
    "Convert 7 km to meters. Answer with the number only.",
    "What is the capital of France?",
    "Rewrite the date 25 December 1999 in ISO format (YYYY-MM-DD). Answer with the date only.",
]


def greedy(client, model: str, prompt: str, max_tokens: int = 24) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens
    )
    return response.choices[0].message.content


def engine_ids(http) -> set[int]:
    return set(http.get("/v1/adapters").json()["engine_ids"])


def test_models_lists_base_and_adapters(openai_client):
    cards = {m.id: m for m in openai_client.models.list().data}
    assert set(cards) == {MODEL, "dates", "units"}
    assert cards["dates"].parent == MODEL and cards["units"].parent == MODEL
    assert cards[MODEL].parent is None


def test_adapters_give_different_greedy_outputs(openai_client):
    outputs = {m: greedy(openai_client, m, DATE_PROMPT) for m in (MODEL, "dates", "units")}
    assert len(set(outputs.values())) == 3, outputs
    assert outputs["dates"].strip() == "2001-03-03"  # the trained behaviour
    assert outputs[MODEL].strip() != "2001-03-03"


def test_mixed_concurrent_traffic_has_no_cross_talk(server):
    models = [MODEL, "dates", "units"]
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)

    async def one(model, prompt):
        response = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24
        )
        return response.choices[0].message.content

    async def run():
        alone = {(m, p): await one(m, p) for m in models for p in PROMPTS}  # one at a time
        pairs = [(m, p) for m in models for p in PROMPTS] * 2
        together = await asyncio.gather(*(one(m, p) for m, p in pairs))  # all batched together
        return alone, pairs, together

    alone, pairs, together = asyncio.run(run())
    assert len({alone[(m, DATE_PROMPT)] for m in models}) == 3  # the adapters really differ
    mismatches = [(m, p) for (m, p), text in zip(pairs, together, strict=True) if text != alone[(m, p)]]
    assert not mismatches


def wait_for(condition, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_hot_swap_under_load_fails_nothing_and_evicts_v1(openai_client, http, adapter_root):
    v1, v2 = adapter_root / "swap-v1", adapter_root / "swap-v2"
    shutil.copytree(adapter_root / "dates", v1, dirs_exist_ok=True)
    shutil.copytree(adapter_root / "units", v2, dirs_exist_ok=True)
    first = http.post("/v1/adapters", json={"name": "swap", "path": str(v1)})
    assert first.status_code == 200, first.text
    v1_id = first.json()["engine_id"]
    expected_v1 = greedy(openai_client, "dates", DATE_PROMPT)
    expected_v2 = greedy(openai_client, "units", DATE_PROMPT)
    assert greedy(openai_client, "swap", DATE_PROMPT) == expected_v1

    results, errors, stop = [], [], threading.Event()  # results: (started, finished, text)

    def load():
        while not stop.is_set():
            try:
                started = time.monotonic()
                text = greedy(openai_client, "swap", DATE_PROMPT)
                results.append((started, time.monotonic(), text))
            except Exception as e:  # any failure at all fails the test
                errors.append(e)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    wait_for(lambda: len(results) >= 6)  # the workers are answered by v1
    swap_began = time.monotonic()
    swapped = http.post("/v1/adapters", json={"name": "swap", "path": str(v2)})
    swapped_at = time.monotonic()
    wait_for(lambda: sum(started > swapped_at for started, _, _ in results) >= 6)  # ... and then by v2
    stop.set()
    for w in workers:
        w.join()

    assert swapped.status_code == 200, swapped.text
    assert swapped.json()["version"] == 2
    assert not errors
    assert all(text == expected_v1 for _, finished, text in results if finished < swap_began)
    assert all(text == expected_v2 for started, _, text in results if started > swapped_at)
    assert {text for _, _, text in results} <= {expected_v1, expected_v2}  # those in flight across the swap: one or the other
    assert greedy(openai_client, "swap", DATE_PROMPT) == expected_v2
    assert v1_id not in engine_ids(http)  # the old version left the engine once its requests ended
    assert swapped.json()["engine_id"] in engine_ids(http)


def test_swap_to_a_corrupt_adapter_keeps_the_old_version_serving(openai_client, http, adapter_root):
    good, bad = adapter_root / "keep-good", adapter_root / "keep-bad"
    shutil.copytree(adapter_root / "dates", good, dirs_exist_ok=True)
    shutil.copytree(adapter_root / "dates", bad, dirs_exist_ok=True)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # truncated
    assert http.post("/v1/adapters", json={"name": "keep", "path": str(good)}).status_code == 200
    before = greedy(openai_client, "keep", DATE_PROMPT)
    response = http.post("/v1/adapters", json={"name": "keep", "path": str(bad)})
    assert_openai_error(response, 400, "path", "invalid_adapter")
    assert "truncated" in response.json()["error"]["message"]
    assert http.get("/v1/adapters/keep").json()["version"] == 1
    assert greedy(openai_client, "keep", DATE_PROMPT) == before
    assert_still_serving(http)


def test_delete_really_evicts_from_the_engine(openai_client, http, adapter_root):
    loaded = http.post("/v1/adapters", json={"name": "gone", "path": "units"})  # relative to the root
    assert loaded.status_code == 200, loaded.text
    engine_id = loaded.json()["engine_id"]
    assert greedy(openai_client, "gone", DATE_PROMPT)
    assert engine_id in engine_ids(http)
    assert http.delete("/v1/adapters/gone").json() == {"name": "gone", "version": 1, "deleted": True}
    assert engine_id not in engine_ids(http)
    with pytest.raises(openai.NotFoundError):
        greedy(openai_client, "gone", DATE_PROMPT)
    assert_openai_error(http.delete("/v1/adapters/gone"), 404, code="adapter_not_found")
    assert_openai_error(http.get("/v1/adapters/gone"), 404, code="adapter_not_found")


def test_vllm_shaped_load_and_unload_endpoints(openai_client, http, adapter_root):
    path = str(adapter_root / "dates")
    loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "vllm-style", "lora_path": path})
    assert loaded.status_code == 200 and "added successfully" in loaded.text
    assert greedy(openai_client, "vllm-style", DATE_PROMPT) == greedy(openai_client, "dates", DATE_PROMPT)
    engine_id = http.get("/v1/adapters/vllm-style").json()["engine_id"]
    duplicate = http.post("/v1/load_lora_adapter", json={"lora_name": "vllm-style", "lora_path": path})
    assert_openai_error(duplicate, 400, "lora_name")
    unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": "vllm-style"})
    assert unloaded.status_code == 200 and "removed successfully" in unloaded.text
    assert engine_id not in engine_ids(http)  # unlike vLLM's own endpoint, this one evicts
    assert_still_serving(http)


def test_completions_and_streaming_use_the_adapter(openai_client):
    chat = greedy(openai_client, "dates", DATE_PROMPT)
    stream = openai_client.chat.completions.create(
        model="dates", messages=[{"role": "user", "content": DATE_PROMPT}], temperature=0, max_tokens=24, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == chat
    # The units adapter's skill itself (its training format: chat, number only), which the base lacks.
    units_prompt = "Convert 7.5 km to meters. Answer with the number only."
    assert greedy(openai_client, "units", units_prompt) == "7500"
    assert greedy(openai_client, MODEL, units_prompt) != "7500"
    completion = openai_client.completions.create(model="units", prompt="Convert 7 km to meters.", max_tokens=8, temperature=0)
    assert completion.model == "units" and completion.choices[0].text
