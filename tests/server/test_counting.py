"""The keys file's counting rules and the guard's reach, on the real serving code over a fake engine."""

from fastapi.testclient import TestClient

from tests.helpers import ATTACK_TEXT, GUARD_MODEL, MODEL, assert_openai_error, chat_body
from tests.server.fake_engine import FakeEngine
from tuneserve.server.app import create_app
from tuneserve.server.auth import Authenticator, KeysFile
from tuneserve.server.config import ServeConfig
from tuneserve.server.serving import ServedModel

KEYS = {"keys": [
    {"name": "rpm", "key": "sk-rpm-00000001", "requests_per_minute": 2, "models": [MODEL]},
    {"name": "budget", "key": "sk-budget-00000001", "requests_per_minute": 2, "tokens_per_minute": 60},
]}


def client_for(tokenizer, auth=None, guards=None) -> TestClient:
    model = ServedModel(names=[MODEL], path="/fake", max_model_len=2048)
    app = create_app(ServeConfig(), FakeEngine(), tokenizer, model, auth=auth)
    app.state.guards = guards
    return TestClient(app, raise_server_exceptions=False)


def ask(client, key: str, **body):
    return client.post("/v1/chat/completions", json=chat_body(**body), headers={"Authorization": f"Bearer {key}"})


def test_requests_per_minute_counts_admitted_requests_only(tokenizer):
    """401, 403 and 429 refusals do not count; an admitted request counts once, also when it is
    then refused for its token reservation or for failing validation."""
    client = client_for(tokenizer, Authenticator.from_specs(None, KeysFile.model_validate(KEYS).keys))
    for _ in range(3):
        assert_openai_error(ask(client, "sk-rpm-00000001", model="not-allowed"), 403)
        assert_openai_error(ask(client, "sk-wrong-key-0000"), 401)
    assert ask(client, "sk-rpm-00000001", max_tokens=2).status_code == 200
    assert_openai_error(ask(client, "sk-rpm-00000001", max_tokens=2, stop_token_ids=list(range(300))), 400)  # counts
    for _ in range(2):  # a 429 does not count either: still 2
        assert "2 requests per minute" in assert_openai_error(ask(client, "sk-rpm-00000001", max_tokens=2), 429)["message"]

    assert_openai_error(ask(client, "sk-budget-00000001", max_tokens=500), 429)  # its reservation does not fit: counts
    assert ask(client, "sk-budget-00000001", max_tokens=2).status_code == 200
    assert "2 requests per minute" in assert_openai_error(ask(client, "sk-budget-00000001", max_tokens=2), 429)["message"]


def test_a_refused_request_does_not_hold_its_place_in_the_minute():
    """429s do not count: once the admitted requests age out of the minute, the key is admitted
    again, however often it was refused meanwhile (the HTTP test above cannot wait a minute)."""
    import pytest

    from tuneserve.server.auth import RateLimitError, Tenant, TenantSpec

    tenant = Tenant(TenantSpec(name="rpm", key="sk-rpm-00000001", requests_per_minute=2))
    tenant.admit(now=0.0)
    tenant.admit(now=1.0)
    for now in (30.0, 31.0):
        with pytest.raises(RateLimitError):
            tenant.admit(now=now)
    tenant.admit(now=61.5)  # 0 and 1 have left the window; the refusals at 30 and 31 never entered it


def test_guard_model_without_keys_guards_every_request(tokenizer):
    from tuneserve.server.guards import load_guards

    client = client_for(tokenizer, guards=load_guards(str(GUARD_MODEL), []))
    assert_openai_error(client.post("/v1/chat/completions", json=chat_body(ATTACK_TEXT, max_tokens=2)), 400, code="prompt_injection_detected")
    assert client.post("/v1/chat/completions", json=chat_body("What is the capital of France?", max_tokens=2)).status_code == 200


def test_render_gives_the_ids_a_request_runs_with_and_is_not_counted_as_one(tokenizer):
    """vllm-router renders each request (vLLM's /v1/*/render) before routing it on token ids:
    the ids are the ones /tokenize gives, and the render does not spend the key's requests."""
    client = client_for(tokenizer, Authenticator.from_specs(None, KeysFile.model_validate(KEYS).keys))
    key = {"Authorization": "Bearer sk-rpm-00000001"}
    body = chat_body("What is the capital of France?")
    for _ in range(3):
        chat = client.post("/v1/chat/completions/render", json=body, headers=key)
        assert chat.status_code == 200, chat.text
    expected = client.post("/tokenize", json={"model": MODEL, "messages": body["messages"]}, headers=key).json()["tokens"]
    assert chat.json()["token_ids"] == expected and chat.json()["model"] == MODEL
    completions = client.post("/v1/completions/render", json={"model": MODEL, "prompt": ["Paris is", "Rome"]}, headers=key).json()
    assert [c["token_ids"] for c in completions] == [tokenizer("Paris is").input_ids, tokenizer("Rome").input_ids]
    assert ask(client, "sk-rpm-00000001", max_tokens=2).status_code == 200  # the tokenize above was the first of 2
    assert_openai_error(ask(client, "sk-rpm-00000001", max_tokens=2), 429)
    assert_openai_error(client.post("/v1/chat/completions/render", json=chat_body(model="other")), 401)
    assert_openai_error(client.post("/v1/chat/completions/render", json=chat_body(model="other"), headers=key), 403)
