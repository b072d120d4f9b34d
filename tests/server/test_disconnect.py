"""A client that goes away mid-request aborts its engine request."""

import time

import httpx
import pytest

from tests.helpers import ADMIN_KEY, chat_body, metric, read_metrics

pytestmark = pytest.mark.engine

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
LONG = chat_body(content="Tell me a very long story.", max_tokens=1500, ignore_eos=True, temperature=0)


def running(http) -> float:
    return metric(read_metrics(http), "vllm:num_requests_running")


def unfinished(http) -> float:
    return metric(read_metrics(http), "tuneserve_engine_unfinished_requests")


def wait_for_idle(http, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running(http) == 0 and unfinished(http) == 0:
            return
        time.sleep(0.25)
    raise AssertionError(f"engine still busy: running={running(http)} unfinished={unfinished(http)}")


def test_stream_disconnect_aborts_the_engine_request(server, http):
    wait_for_idle(http)
    with httpx.Client(base_url=server.base_url, timeout=60, headers=AUTH) as client:
        with client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
            assert response.status_code == 200
            assert running(http) == 1  # generating 1500 tokens takes a minute: still running
            assert unfinished(http) == 1
    wait_for_idle(http)  # without the abort this would stay at 1 for about a minute


def test_non_stream_disconnect_aborts_the_engine_request(server, http):
    wait_for_idle(http)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=LONG, timeout=3, headers=AUTH)
    wait_for_idle(http)
