"""Admission limits, timeouts and the SIGTERM drain, on a second real server with tight limits
(which also publishes its engine's KV-cache events, as replicas do for kv_aware routing)."""

import json
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import start_server, stop_server
from tests.helpers import assert_openai_error, chat_body, metric, read_metrics, wait_until_idle

pytestmark = pytest.mark.engine

LIMITS = ["--max-queued-requests", "2", "--request-timeout-s", "8", "--max-tokens-cap", "1500", "--drain-timeout-s", "60"]
LONG = {"max_tokens": 1200, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def kv_events_endpoint():
    from tuneserve.server import free_port

    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def limited(tmp_path_factory, kv_events_endpoint):
    running = start_server(tmp_path_factory.mktemp("limited"), *LIMITS, "--kv-events-endpoint", kv_events_endpoint)
    yield running
    stop_server(running)


def test_the_engine_publishes_the_blocks_it_caches_for_kv_aware_routing(limited, kv_events_endpoint):
    """--kv-events-endpoint (what `--replicas N --router-policy kv_aware` gives each replica): the
    engine publishes every KV-cache block it stores, with its tokens, where vllm-router subscribes."""
    import msgspec
    import zmq
    from vllm.distributed.kv_events import BlockStored, KVEventBatch

    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.connect(kv_events_endpoint)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.setsockopt(zmq.RCVTIMEO, 500)
    time.sleep(1)  # a late subscriber misses what was published before it joined
    prompt = list(range(1000, 1300))  # 300 tokens: two whole blocks of 128 (the CPU backend's block)
    body = {"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": 1, "temperature": 0}
    assert httpx.post(f"{limited.base_url}/v1/completions", json=body, timeout=120).status_code == 200
    stored, deadline = [], time.monotonic() + 30
    while not stored and time.monotonic() < deadline:
        try:
            _, _, payload = socket.recv_multipart()
        except zmq.Again:
            continue
        batch = msgspec.msgpack.decode(payload, type=KVEventBatch)
        stored += [e for e in batch.events if isinstance(e, BlockStored)]
    socket.close()
    assert stored, "no BlockStored event within 30 s"
    tokens = [t for event in stored for t in event.token_ids]
    assert tokens[:256] == prompt[:256] and stored[0].block_size == 128


@pytest.fixture()
def client(limited):
    with httpx.Client(base_url=limited.base_url, timeout=120) as c:
        yield c


def stream_in_background(base_url: str, body: dict, lines: list, started: threading.Event) -> threading.Thread:
    def run():
        with httpx.Client(base_url=base_url, timeout=120) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            lines.append(r.status_code)
            for line in r.iter_lines():
                started.set()
                if line:  # SSE events are separated by blank lines
                    lines.append(line)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_max_tokens_above_the_cap_is_400(client):
    assert_openai_error(client.post("/v1/chat/completions", json=chat_body(max_tokens=1600)), 400, "max_tokens")


def start_streams(base_url: str, count: int, max_tokens: int) -> tuple[list[threading.Thread], list[list]]:
    """`count` streaming chats in background threads, returned once each has its first bytes."""
    threads, outputs = [], []
    for _ in range(count):
        lines, started = [], threading.Event()
        body = chat_body(stream=True, max_tokens=max_tokens, ignore_eos=True, temperature=0)
        threads.append(stream_in_background(base_url, body, lines, started))
        outputs.append(lines)
        assert started.wait(60)
    return threads, outputs


def test_requests_beyond_the_queue_limit_get_503_with_retry_after(limited, client):
    wait_until_idle(client)
    threads, outputs = start_streams(limited.base_url, 2, max_tokens=120)
    response = client.post("/v1/chat/completions", json=chat_body(max_tokens=4))
    assert_openai_error(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    for t in threads:
        t.join()
    assert all(lines[0] == 200 and lines[-1] == "data: [DONE]" for lines in outputs)
    assert client.post("/v1/chat/completions", json=chat_body(max_tokens=4)).status_code == 200


def test_slow_request_times_out_with_504_and_is_aborted(client):
    wait_until_idle(client)
    before = metric(read_metrics(client), "vllm:generation_tokens_total")
    response = client.post("/v1/chat/completions", json=chat_body(**LONG))
    assert_openai_error(response, 504)
    wait_until_idle(client, timeout_s=120)
    # The engine stopped early: it never generated the 1,200 tokens the request asked for.
    assert metric(read_metrics(client), "vllm:generation_tokens_total") - before < LONG["max_tokens"]


def test_slow_stream_ends_with_a_timeout_event(client):
    wait_until_idle(client)
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, **LONG)) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["type"] == "timeout"
    wait_until_idle(client)


def test_sigterm_drains_in_flight_requests_then_exits_0(limited, client):
    """Runs last in this module: it stops the server."""
    wait_until_idle(client)
    # 40 tokens: well inside this server's 8 s request timeout on a slow CPU, and still running at SIGTERM
    threads, outputs = start_streams(limited.base_url, 2, max_tokens=40)
    limited.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 503:  # the drain has begun
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metric(read_metrics(client), "tuneserve_queue_depth") == 2  # both streams were still running at SIGTERM
    assert_openai_error(client.post("/v1/chat/completions", json=chat_body(max_tokens=4)), 503)
    for t in threads:
        t.join()
    for lines in outputs:  # both finished every token, after SIGTERM
        assert lines[0] == 200 and lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[1:-1] if line.startswith("data: ")]
        assert not any("error" in c for c in chunks), chunks[-1]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert limited.process.wait(60) == 0
    # The engine core exited by itself within vLLM's 5 s grace period (plugin change 5: no
    # whole-heap garbage collection at exit), instead of being killed at its end.
    assert "[shutdown] EngineCore: exiting busy loop" in limited.log_path.read_text()
    assert "force killing remaining process" not in limited.log_path.read_text()
