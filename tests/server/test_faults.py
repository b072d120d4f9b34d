"""Engine faults (a fake engine in-process): clear errors, no internals leaked."""

import json

import pytest
from fastapi.testclient import TestClient

from tests.helpers import MODEL, assert_openai_error, chat_body
from tests.server.fake_engine import FakeEngine
from tuneserve.server.app import create_app
from tuneserve.server.config import ServeConfig
from tuneserve.server.serving import ServedModel


@pytest.fixture()
def make_client(tokenizer):
    def make(fault=None):
        model = ServedModel(names=[MODEL], path="/fake", max_model_len=2048)
        app = create_app(ServeConfig(), FakeEngine(fault=fault), tokenizer, model)
        return TestClient(app, raise_server_exceptions=False)

    return make


def sse_events(response) -> list:
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def test_fake_engine_streams_normally(make_client):
    events = sse_events(make_client().post("/v1/chat/completions", json=chat_body(stream=True)))
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == "tok0 tok1 tok2 tok3 "
    assert events[-1] == "[DONE]"


def test_dead_engine_fails_health_and_requests_with_503(make_client):
    client = make_client("dead")
    assert_openai_error(client.get("/health"), 503)
    error = assert_openai_error(client.post("/v1/chat/completions", json=chat_body()), 503)
    assert error["type"] == "engine_dead"


def test_error_mid_stream_is_one_error_event_then_done(make_client):
    response = make_client("mid_stream").post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200  # headers went out with the first token
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "worker crashed" not in error["message"]
    assert sum(1 for e in events if isinstance(e, dict) and "error" in e) == 1


def test_unexpected_error_is_500_without_internals(make_client):
    response = make_client("bug").post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
    error = assert_openai_error(response, 500)
    assert "secret" not in response.text
    assert error["type"] == "server_error"
