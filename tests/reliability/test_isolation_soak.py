"""Two keys, one attacking: the other key's streams keep their time to first token, the server its
memory, and the engine drains to idle. `make test-slow` and `make reliability` run it (~3 min).

The victim runs 8 streams in a loop, first alone (its quiet TTFT), then while the attacker sends,
at once: completions fanned out to its whole share of the batch, streams it never reads, guarded
chats of 380 distinct messages, and Responses with the largest metadata OpenAI allows.
"""

import asyncio
import json
import socket
import statistics
import time

import httpx
import pytest

from tests.conftest import start_server
from tests.helpers import GUARD_MODEL, MODEL, metric, read_metrics, wait_until_idle
from tests.reliability.test_load import tree_rss_mib
from tuneserve.server.process import stop_server

pytestmark = [pytest.mark.engine, pytest.mark.slow]

VICTIM_KEY, ATTACKER_KEY = "sk-soak-victim-0001", "sk-soak-attacker-0001"
KEYS = f"""
keys:
  - name: victim
    key: {VICTIM_KEY}
    scopes: [inference, admin]
  - name: attacker
    key: {ATTACKER_KEY}
    guards:
      input: {{threshold: 0.5, action: block}}
      output: {{canaries: ["ZEBRA-7731"], system_prompt: true}}
"""
NUM_STREAMS = 8
ATTACK_S = 60


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("soak")
    (tmp / "keys.yaml").write_text(KEYS)
    running = start_server(tmp, "--api-keys", str(tmp / "keys.yaml"), "--guard-model", str(GUARD_MODEL),
                           "--send-timeout-s", "5", "--request-timeout-s", "120")
    yield running
    stop_server(running)


async def victim_stream(client: httpx.AsyncClient, i: int, until: float, ttfts: list[float]) -> None:
    n = 0
    while time.monotonic() < until:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Question {i}.{n}: name a colour."}],
                "max_tokens": 24, "temperature": 0, "stream": True}
        started = time.monotonic()
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            first = None
            async for line in response.aiter_lines():
                if first is None and line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    first = time.monotonic() - started
            ttfts.append(first)
        n += 1


async def victim(base_url: str, duration_s: float) -> list[float]:
    ttfts: list[float] = []
    until = time.monotonic() + duration_s
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {VICTIM_KEY}"}, timeout=120) as c:
        await asyncio.gather(*(victim_stream(c, i, until, ttfts) for i in range(NUM_STREAMS)))
    return ttfts


def unread_stream(base_url: str) -> socket.socket:
    """A streaming request on a socket with a tiny receive window that is never read."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "stream": True,
                       "max_tokens": 1500, "ignore_eos": True, "logprobs": True, "top_logprobs": 20}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {ATTACKER_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


async def attacker(base_url: str, until: float, tally: dict) -> None:
    async def loop(make_request):
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ATTACKER_KEY}"}, timeout=150) as c:
            while time.monotonic() < until:
                response = await make_request(c)
                tally[response.status_code] = tally.get(response.status_code, 0) + 1

    def fan_out(c):  # with the 4 unread streams, the attacker's whole share of the batch (16)
        return c.post("/v1/completions", json={"model": MODEL, "prompt": [[1, 2, 3]] * 4, "n": 3, "temperature": 1,
                                               "max_tokens": 48, "ignore_eos": True})

    def guard_heavy(c):
        messages = [{"role": "user", "content": f"Weather question {i}: is spring warm here?"} for i in range(380)]  # 15,850 characters, all scored
        return c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 8, "messages": messages})

    def metadata(c):
        body = {"model": MODEL, "input": "What is the capital of France?", "max_output_tokens": 16, "metadata": {f"k{i:02d}" + "x" * 61: "v" * 512 for i in range(16)}}
        return c.post("/v1/responses", json=body)

    await asyncio.gather(loop(fan_out), loop(fan_out), loop(guard_heavy), loop(metadata), loop(metadata))


def test_one_key_attacking_leaves_the_other_keys_ttft_memory_and_engine_intact(soak_server, record):
    url = soak_server.base_url
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {VICTIM_KEY}"}, timeout=60) as admin:
        asyncio.run(victim(url, 15))  # warm-up
        wait_until_idle(admin)
        rss_warm = tree_rss_mib(soak_server.process.pid)
        quiet = asyncio.run(victim(url, 30))

        tally: dict[int, int] = {}
        sockets = [unread_stream(url) for _ in range(4)]

        async def attacked() -> list[float]:
            until = time.monotonic() + ATTACK_S
            attack = asyncio.create_task(attacker(url, until, tally))
            await asyncio.sleep(5)  # the attack is under way before the victim measures
            ttfts = await victim(url, ATTACK_S - 10)
            await attack
            return ttfts

        loud = asyncio.run(attacked())
        held = read_metrics(admin)
        idle = wait_until_idle(admin, timeout_s=120)  # the unread streams are still open: the server ends them itself
        rss_after = tree_rss_mib(soak_server.process.pid)
        for s in sockets:
            s.close()
    p50_quiet, p50_loud = statistics.median(quiet), statistics.median(loud)
    assert p50_loud <= 2 * p50_quiet, (p50_quiet, p50_loud)
    assert rss_after <= 1.10 * rss_warm, (rss_warm, rss_after)
    assert idle == {"vllm:num_requests_running": 0, "vllm:num_requests_waiting": 0, "tuneserve_queue_depth": 0}
    # The attacker's requests queue behind its own share (its fan-outs hold all of it): some end in
    # its own 504s (its deadline); nothing else fails.
    assert set(tally) <= {200, 400, 429, 504}, tally
    record("isolation soak: 2 keys, one attacking (fan-out to its whole share, 4 unread streams, guarded 380-message "
           "chats, Responses with the largest metadata)", len(quiet) + len(loud) + sum(tally.values()),
           "the other key's p50 TTFT within 2x of quiet; memory back; engine idle",
           f"victim p50 TTFT {p50_quiet * 1000:.0f} ms quiet -> {p50_loud * 1000:.0f} ms attacked ({p50_loud / p50_quiet:.2f}x); "
           f"attacker answers {dict(sorted(tally.items()))}; RSS {rss_warm:.0f} -> {rss_after:.0f} MiB "
           f"({(rss_after / rss_warm - 1) * 100:+.1f}%); engine running at the attack's end "
           f"{metric(held, 'vllm:num_requests_running'):.0f}, after 0")
