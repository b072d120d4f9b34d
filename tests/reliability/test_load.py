"""Load with faults, and hot swaps under load, on the real engine.

200 concurrent streaming clients, 30% of them hanging up at random points: afterwards nothing is
left running or waiting in the engine, memory is back to its warmed-up level, and every response
that completed is whole. 50 swaps of one adapter while requests stream to it: nothing fails, the
engine never holds more adapters than its limit, no engine id leaks, and streams keep flowing.
"""

import asyncio
import json
import random
import shutil
import statistics
import time

import httpx
import psutil
import pytest

from tests.conftest import start_server
from tests.helpers import ADAPTERS, MODEL, wait_until_idle
from tuneserve.server.process import stop_server

pytestmark = pytest.mark.engine

MAX_CPU_LORAS = 5


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("load-adapters")
    for name, path in ADAPTERS.items():
        shutil.copytree(path, root / name)
    return root


@pytest.fixture(scope="module")
def load_server(tmp_path_factory, adapters_dir):
    running = start_server(tmp_path_factory.mktemp("load"), "--max-num-seqs", "64", "--adapter-root", str(adapters_dir),
                           "--adapter", f"dates={adapters_dir / 'dates'}", "--adapter", f"units={adapters_dir / 'units'}",
                           "--max-cpu-loras", str(MAX_CPU_LORAS))
    yield running
    stop_server(running)


def tree_rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / (1 << 20)


async def one_stream(client: httpx.AsyncClient, body: dict, hang_up_after: int | None) -> dict:
    """Stream one chat; hang up after `hang_up_after` events (None: read to the end)."""
    events = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line:
                continue
            events.append(line)
            if hang_up_after is not None and len(events) >= hang_up_after:
                return {"hung_up": True}
    return {"hung_up": False, "status": response.status_code, "events": events, "max_tokens": body["max_tokens"]}


def is_whole(result: dict) -> bool:
    events = result["events"]
    if result["status"] != 200 or events[-1] != "data: [DONE]":
        return False
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return (not any("error" in c for c in chunks) and finishes == ["length"]
            and chunks[-1]["usage"]["completion_tokens"] == result["max_tokens"])


async def storm(base_url: str, num_clients: int, hang_up_share: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=num_clients + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        jobs = []
        for i in range(num_clients):
            body = {"model": rng.choice([MODEL, MODEL, "dates"]), "stream": True, "ignore_eos": True, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Client {i}: tell me about the number {rng.randint(1, 10**6)}."}],
                    "max_tokens": rng.randint(8, 48), "stream_options": {"include_usage": True}}
            hang_up_after = rng.randint(1, 12) if rng.random() < hang_up_share else None
            jobs.append(one_stream(client, body, hang_up_after))
        return await asyncio.wait_for(asyncio.gather(*jobs), timeout=600)


def run_storm_and_check(server, num_clients: int, rounds: int, record) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        asyncio.run(storm(server.base_url, 20, 0.0, seed=-1))  # warm-up
        wait_until_idle(http)
        warm_rss = tree_rss_mib(server.process.pid)
        num_whole = num_hung_up = 0
        for round_index in range(rounds):
            results = asyncio.run(storm(server.base_url, num_clients, 0.3, seed=round_index))
            completed = [r for r in results if not r["hung_up"]]
            broken = [r for r in completed if not is_whole(r)]
            assert not broken, broken[0]
            num_whole += len(completed)
            num_hung_up += len(results) - len(completed)
        idle = wait_until_idle(http)
        after_rss = tree_rss_mib(server.process.pid)
    assert idle == {"vllm:num_requests_running": 0, "vllm:num_requests_waiting": 0, "tuneserve_queue_depth": 0}
    assert num_hung_up >= 0.2 * num_clients * rounds
    assert abs(after_rss - warm_rss) <= 0.10 * warm_rss, (warm_rss, after_rss)
    record(f"load with faults: {num_clients} concurrent streams x {rounds} round(s), 30% hanging up at random points",
           num_clients * rounds, "every completed response whole; engine idle afterwards",
           f"{num_whole} whole, {num_hung_up} hung up; running/waiting after: 0/0; "
           f"server RSS {warm_rss:.0f} MiB after warm-up -> {after_rss:.0f} MiB ({after_rss / warm_rss - 1:+.1%})")


def test_200_streams_with_30_percent_hanging_up(load_server, record):
    run_storm_and_check(load_server, 200, 1, record)


@pytest.mark.slow
def test_soak_5_rounds_of_200_streams(load_server, record):
    run_storm_and_check(load_server, 200, 5, record)


DATE_PROMPT = "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only."


async def greedy(client: httpx.AsyncClient, model: str) -> str:
    response = await client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": DATE_PROMPT}], "temperature": 0, "max_tokens": 12})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


async def token_gaps(client: httpx.AsyncClient, stop: asyncio.Event) -> tuple[list[float], list[str]]:
    """Inter-token gaps of back-to-back base-model streams until `stop` is set, and how each stream ended."""
    gaps, endings = [], []
    while not stop.is_set():
        body = {"model": MODEL, "stream": True, "ignore_eos": True, "temperature": 0, "max_tokens": 64,
                "messages": [{"role": "user", "content": "Count slowly."}]}
        last = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    now = time.monotonic()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                    finish = json.loads(line[6:])["choices"][0].get("finish_reason")
                    if finish:
                        endings.append(finish)
    return gaps, endings


async def swap_drill(base_url: str, adapters_dir, num_swaps: int) -> dict:
    paths = [str(adapters_dir / "dates"), str(adapters_dir / "units")]
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        assert (await client.post("/v1/adapters", json={"name": "swap", "path": paths[0]})).status_code == 200
        expected = {await greedy(client, "dates"), await greedy(client, "units")}
        outputs, failures, stop = [], [], asyncio.Event()

        async def user():
            while not stop.is_set():
                try:
                    outputs.append(await greedy(client, "swap"))
                except Exception as e:
                    failures.append(repr(e))

        async def window(swapping: bool) -> tuple[tuple[list[float], list[str]], list[int]]:
            stop.clear()
            users = [asyncio.create_task(user()) for _ in range(6)]
            probe = asyncio.create_task(token_gaps(client, stop))
            loaded_counts = []
            for i in range(num_swaps):
                if swapping:
                    response = await client.post("/v1/adapters", json={"name": "swap", "path": paths[(i + 1) % 2]})
                    if response.status_code != 200:
                        failures.append(response.text)
                else:
                    await asyncio.sleep(0.05)
                loaded_counts.append(len((await client.get("/v1/adapters")).json()["engine_ids"]))
                await asyncio.sleep(0.15)
            stop.set()
            await asyncio.gather(*users)
            return await probe, loaded_counts

        (quiet_gaps, _), _ = await window(swapping=False)
        (swap_gaps, swap_endings), loaded_counts = await window(swapping=True)
        state = (await client.get("/v1/adapters")).json()
        await client.delete("/v1/adapters/swap")
        dates_after = await greedy(client, "dates")  # evicted from the engine's cache meanwhile? it reloads
    return {"outputs": outputs, "expected": expected, "failures": failures, "loaded_counts": loaded_counts,
            "quiet_gaps": quiet_gaps, "swap_gaps": swap_gaps, "swap_endings": swap_endings, "state": state, "dates_after": dates_after}


def test_50_hot_swaps_under_load(load_server, adapters_dir, record):
    result = asyncio.run(swap_drill(load_server.base_url, adapters_dir, num_swaps=50))
    assert result["failures"] == []
    assert set(result["outputs"]) <= result["expected"] and len(result["outputs"]) > 50
    assert max(result["loaded_counts"]) <= MAX_CPU_LORAS
    state = result["state"]
    current_ids = {a["engine_id"] for a in state["data"]}
    # Every replaced version left the engine (no leaked ids). The engine's LRU cache may also have
    # dropped an idle adapter while retired versions were still finishing: it reloads on demand.
    assert set(state["engine_ids"]) <= current_ids
    assert result["dates_after"].strip() == "2001-03-03"
    assert next(a for a in state["data"] if a["name"] == "swap")["version"] == 51
    # A base-model stream running beside the swaps is never cut: each one it started ran its 64 tokens.
    # How long swaps stall it is a measurement (reported below), not an assertion: it depends on the machine.
    assert result["swap_endings"] and set(result["swap_endings"]) == {"length"}, result["swap_endings"]
    quiet_max, swap_max = max(result["quiet_gaps"]), max(result["swap_gaps"])
    record("hot swap under load: one adapter swapped 50 times while 6 clients stream to it", 50,
           "0 failed requests; no leaked engine ids",
           f"{len(result['outputs'])} requests answered by v1 or v2 only; adapters in engine <= {max(result['loaded_counts'])} "
           f"(limit {MAX_CPU_LORAS}); largest token gap of a concurrent stream {swap_max * 1000:.0f} ms during swaps vs "
           f"{quiet_max * 1000:.0f} ms without (median {statistics.median(result['swap_gaps']) * 1000:.0f} vs "
           f"{statistics.median(result['quiet_gaps']) * 1000:.0f} ms)")
