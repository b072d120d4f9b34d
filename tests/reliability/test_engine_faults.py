"""Engine-side faults on the real engine: its process killed, and SIGTERM under load."""

import json
import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import start_server
from tests.helpers import assert_openai_error, chat_body
from tuneserve.server.process import stop_server

pytestmark = pytest.mark.engine


def engine_core(server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return next(p for p in children if p.name().startswith("VLLM::EngineCore"))


def health_status(base_url: str) -> int | None:
    """/health's status, or None when the connection is refused."""
    try:
        return httpx.get(f"{base_url}/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_killed_engine_fails_health_with_503_until_the_server_exits_1(tmp_path, record):
    server = start_server(tmp_path)
    try:
        assert health_status(server.base_url) == 200
        engine_core(server).kill()  # SIGKILL: what the OOM killer or a segfault does
        killed_at = time.monotonic()
        statuses = []
        while (status := health_status(server.base_url)) is not None:
            statuses.append(status)
            assert time.monotonic() - killed_at < 30
            time.sleep(0.01)
        refused_s = time.monotonic() - killed_at
        exit_code = server.process.wait(1)  # refused only because the process is gone (it lived 8 s refusing before)
        exited_s = time.monotonic() - killed_at
    finally:
        stop_server(server)
    assert exit_code == 1  # an orchestrator restarts it
    # 200 until the death is noticed, then 503 until the socket goes with the process (since the
    # engine stops in ~1 s, that window can fall between two polls: then no 503 is seen at all)
    assert set(statuses) <= {200, 503}
    first_503 = statuses.index(503) if 503 in statuses else len(statuses)
    assert set(statuses[first_503:]) <= {503}
    assert "the vLLM engine has died" in server.log_path.read_text()
    record("engine process killed (SIGKILL)", 1, "/health 503 until exit, server exited 1",
           f"{len(statuses) - first_503} answers of 503 after the death, none refused before exit; refused after "
           f"{refused_s:.1f} s, process gone after {exited_s:.1f} s")


NUM_STREAMS = 24


# ~55 s with its own server: `make test-slow` and `make reliability`. `make test` drains two streams in
# tests/server/test_limits_and_drain.py::test_sigterm_drains_in_flight_requests_then_exits_0.
@pytest.mark.slow
def test_sigterm_under_load_finishes_in_flight_refuses_new_exits_0(tmp_path, record):
    server = start_server(tmp_path, "--drain-timeout-s", "120")
    results: list[list[str]] = [[] for _ in range(NUM_STREAMS)]
    started = [threading.Event() for _ in range(NUM_STREAMS)]

    def stream(i: int) -> None:
        body = chat_body(content=f"Story number {i}:", stream=True, max_tokens=96, ignore_eos=True, temperature=0)
        with httpx.Client(base_url=server.base_url, timeout=300) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            results[i].append(str(r.status_code))
            for line in r.iter_lines():
                started[i].set()
                if line:
                    results[i].append(line)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(NUM_STREAMS)]
    try:
        for t in threads:
            t.start()
        for event in started:
            assert event.wait(120)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(max_tokens=4), timeout=30)
        for t in threads:
            t.join(300)
        exit_code = server.process.wait(120)
    finally:
        stop_server(server)
    assert_openai_error(refused, 503)
    assert "Retry-After" in refused.headers
    for lines in results:  # every stream in flight at SIGTERM finished whole
        assert lines[0] == "200" and lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[1:-1]]
        assert not any("error" in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 90
    assert exit_code == 0
    record("SIGTERM under load", NUM_STREAMS, "every in-flight stream finished whole, new request 503, exit 0",
           f"{NUM_STREAMS} streams of 96 tokens in flight at SIGTERM")
