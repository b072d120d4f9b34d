"""Engine faults (a fake engine in-process): clear errors, no internals leaked."""

import asyncio
import contextlib
import json
import time

import httpx
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


@pytest.mark.parametrize("fault,status", [("engine_abort", 503), ("engine_error", 500)])
def test_a_request_the_engine_ends_itself_is_a_5xx_not_a_200(make_client, fault, status):
    client = make_client(fault)
    assert_openai_error(client.post("/v1/chat/completions", json=chat_body()), status)
    events = sse_events(client.post("/v1/chat/completions", json=chat_body(stream=True)))
    assert events[-1] == "[DONE]" and "error" in events[-2]  # the stream ends in an error event, not "stop"


def test_a_failing_prompt_aborts_its_siblings(tokenizer):
    engine = FakeEngine(fault="second_prompt_fails", num_tokens=200, token_delay_s=0.005)
    model = ServedModel(names=[MODEL], path="/fake", max_model_len=2048)
    client = TestClient(create_app(ServeConfig(), engine, tokenizer, model), raise_server_exceptions=False)
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 200})
    assert_openai_error(response, 500)
    aborted_suffixes = sorted(rid.rsplit("-", 1)[-1] for rid in engine.aborted)
    assert aborted_suffixes == ["0", "2"]  # both siblings stopped, long before their 200 tokens


def test_a_prompt_refused_before_its_first_token_stops_its_siblings_at_once(tokenizer):
    """The failure came while the others waited for their first token: the response waited for
    them and they were left to run on until garbage collection."""
    engine = FakeEngine(fault="second_prompt_refused", num_tokens=200, token_delay_s=0.005, first_token_delay_s=1.0)
    model = ServedModel(names=[MODEL], path="/fake", max_model_len=2048)
    client = TestClient(create_app(ServeConfig(), engine, tokenizer, model), raise_server_exceptions=False)
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 200})
    assert_openai_error(response, 500)
    assert sorted(rid.rsplit("-", 1)[-1] for rid in engine.aborted) == ["0", "2"]
    assert engine.num_yielded == {}  # cancelled in their prefill: not one token


def test_the_echoed_prompts_logprobs_are_built_once_for_all_n_choices(tokenizer, monkeypatch):
    from tuneserve.server import completions

    prompt_ids = tokenizer("The quick brown fox jumps over the lazy dog").input_ids
    calls = []
    original = completions.completion_logprobs
    monkeypatch.setattr(completions, "completion_logprobs", lambda ids, *a, **k: calls.append(list(ids)) or original(ids, *a, **k))
    model = ServedModel(names=[MODEL], path="/fake", max_model_len=2048)
    client = TestClient(create_app(ServeConfig(), FakeEngine(), tokenizer, model))
    body = {"model": MODEL, "prompt": prompt_ids, "echo": True, "logprobs": 1, "n": 8, "temperature": 0, "max_tokens": 4}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(choices) == 8 and all(c["logprobs"]["tokens"][:len(prompt_ids)] == choices[0]["logprobs"]["tokens"][:len(prompt_ids)] for c in choices)
    assert sum(ids == prompt_ids for ids in calls) == 1  # was once per choice: n x the prompt, on the event loop


def test_when_one_battle_answer_fails_the_other_is_aborted(tokenizer, tmp_path):
    from tests.helpers import ADAPTERS
    from tuneserve.models import resolve_model
    from tuneserve.server.adapters import AdapterRegistry
    from tuneserve.server.main import served_base

    engine = FakeEngine(fault="adapter_fails", num_tokens=2000, token_delay_s=0.005)
    registry = AdapterRegistry(engine, served_base([MODEL], resolve_model(MODEL)), max_rank=16)
    asyncio.run(registry.load("dates", ADAPTERS["dates"]))
    model = ServedModel(names=[MODEL], path="/fake", max_model_len=4096)
    config = ServeConfig(playground=True, arena_db=str(tmp_path / "arena.sqlite"))
    with serving(create_app(config, engine, tokenizer, model, registry)) as url:
        body = {"messages": [{"role": "user", "content": "hi"}], "models": [MODEL, "dates"], "max_tokens": 2000}
        assert_openai_error(httpx.post(f"{url}/v1/arena/battles", json=body, timeout=30), 500)
        time.sleep(0.5)  # the server's loop runs on: an answer left running would still be generating
        assert len(engine.aborted) == 1 and engine.aborted[0].startswith("chatcmpl")  # the base's answer, stopped
        assert max(engine.num_yielded.values()) < 200  # of its 2,000 tokens


@contextlib.contextmanager
def serving(app):
    """`app` behind a real HTTP server (uvicorn in a thread), whose event loop outlives each request."""
    import threading

    import uvicorn

    from tuneserve.server.process import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture()
def live_fake(tokenizer):
    """A real HTTP server (uvicorn in a thread) over a slow fake engine with one adapter; the
    engine's event log also records when admission slots and adapter holds are released."""
    from tests.helpers import ADAPTERS
    from tuneserve.models import resolve_model
    from tuneserve.server.adapters import AdapterRegistry
    from tuneserve.server.main import served_base

    engine = FakeEngine(num_tokens=2000, token_delay_s=0.005)
    registry = AdapterRegistry(engine, served_base([MODEL], resolve_model(MODEL)), max_rank=16)
    asyncio.run(registry.load("dates", ADAPTERS["dates"]))
    model = ServedModel(names=[MODEL], path="/fake", max_model_len=4096)
    app = create_app(ServeConfig(), engine, tokenizer, model, registry)
    admission, hold = app.state.admission, registry.hold
    release = admission.release
    admission.release = lambda: (engine.events.append(("release", "admission")), release())[1]

    @contextlib.asynccontextmanager
    async def logged_hold(name, **kwargs):
        async with hold(name, **kwargs) as version:
            yield version
        engine.events.append(("release", "adapter"))

    registry.hold = logged_hold
    with serving(app) as url:
        yield engine, url


def wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_the_engine_before_releasing_slot_and_adapter(live_fake, stream):
    import httpx

    engine, url = live_fake
    body = chat_body(model="dates", max_tokens=2000, stream=stream)
    if stream:
        with httpx.Client(base_url=url, timeout=30) as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=0.5)
    wait_for(lambda: ("release", "admission") in engine.events)
    kinds = [kind if kind == "abort" else name for kind, name in engine.events]
    assert kinds == ["abort", "adapter", "admission"], engine.events
    assert len(engine.aborted) == 1


def test_metrics_auth_puts_metrics_and_version_behind_a_key(tokenizer):
    from tuneserve.server.auth import Authenticator

    model = ServedModel(names=[MODEL], path="/secret/models/smollm2", max_model_len=2048)
    auth = Authenticator.from_specs("sk-metrics-key-0001", [])
    client = TestClient(create_app(ServeConfig(metrics_auth=True), FakeEngine(), tokenizer, model, auth=auth))
    for path in ("/metrics", "/version"):
        assert_openai_error(client.get(path), 401)
        assert client.get(path, headers={"Authorization": "Bearer sk-metrics-key-0001"}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200  # probes stay open
    version = client.get("/version", headers={"Authorization": "Bearer sk-metrics-key-0001"}).json()
    assert "/secret" not in json.dumps(version)  # no filesystem paths


def test_a_stream_whose_client_stops_reading_ends_and_frees_what_it_holds(tokenizer):
    """A client that never reads blocks the server's send once its TCP window is full (a real one
    needs megabytes of output to get there). The deadline used to cover only the engine's side:
    the request then held its admission slot, adapter and tokens forever."""
    engine = FakeEngine(num_tokens=2000, token_delay_s=0.001)
    model = ServedModel(names=[MODEL], path="/fake", max_model_len=4096)
    app = create_app(ServeConfig(send_timeout_s=0.5), engine, tokenizer, model)
    body = json.dumps(chat_body(stream=True, max_tokens=2000)).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }

    async def scenario():
        num_sent, forever = 0, asyncio.Event()

        async def receive():
            nonlocal body
            if body:
                message, body = {"type": "http.request", "body": body, "more_body": False}, b""
                return message
            await forever.wait()  # the client neither sends nor hangs up

        async def send(message):
            nonlocal num_sent
            num_sent += 1
            if num_sent > 3:
                await forever.wait()  # its window is full: this send never completes

        await asyncio.wait_for(app(scope, receive, send), 10)
        return app.state.admission.num_in_flight

    assert asyncio.run(scenario()) == 0
    assert len(engine.aborted) == 1  # the engine request was aborted too


def test_a_drain_that_runs_out_stops_the_server_and_aborts_what_was_left(tokenizer, caplog):
    """SIGTERM with a stream that outlasts --drain-timeout-s: the server stops anyway (the stream is
    cut and its engine request aborted) instead of waiting for it."""
    import signal
    import threading

    import uvicorn

    from tuneserve.server.main import DrainingServer
    from tuneserve.server.process import free_port

    engine = FakeEngine(num_tokens=2000, token_delay_s=0.005)  # 10 s of tokens
    app = create_app(ServeConfig(), engine, tokenizer, ServedModel(names=[MODEL], path="/fake", max_model_len=4096))
    port = free_port()
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1),
                            app.state.admission, drain_timeout_s=0.5)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    lines = []
    with httpx.Client(timeout=30) as client, client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                                                           json=chat_body(stream=True, max_tokens=2000)) as response:
        events = response.iter_lines()
        lines.append(next(events))
        server.servers[0].get_loop().call_soon_threadsafe(server.handle_exit, signal.SIGTERM, None)
        try:
            lines += list(events)
        except httpx.HTTPError:
            pass  # the connection was cut
    thread.join(10)
    assert not thread.is_alive()  # it stopped, ~1.5 s after SIGTERM, not after the stream's 10 s
    assert "data: [DONE]" not in lines
    assert len(engine.aborted) == 1
    assert "drain timed out after" in caplog.text
