"""Tenants: keys, scopes, allowed models, per-minute limits — all in OpenAI's error shape."""

import asyncio

import httpx
import openai
import pytest

from tests.helpers import (
    BURST_KEY,
    INFERENCE_KEY,
    LIMITED_KEY,
    MODEL,
    TOKEN_LIMITED_KEY,
    assert_openai_error,
    assert_still_serving,
    chat_body,
)

pytestmark = pytest.mark.engine


def as_key(server, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=120)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer sk-not-a-real-key", "Basic c2stdGVzdA=="])
def test_missing_or_wrong_key_is_401(server, http, header):
    headers = {"Authorization": header} if header else {}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(max_tokens=4), headers=headers)
    assert_openai_error(response, 401, code="invalid_api_key")
    assert_still_serving(http)


def test_openai_client_sees_authentication_error(server):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-wrong-key-000", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_probes_need_no_key(server):
    for path in ("/health", "/ready", "/metrics", "/version"):
        assert httpx.get(f"{server.base_url}{path}").status_code == 200


def test_inference_key_cannot_use_admin_routes(server, http):
    with as_key(server, INFERENCE_KEY) as tenant:
        assert_openai_error(tenant.get("/v1/adapters"), 403, code="permission_denied")
        assert_openai_error(tenant.post("/v1/adapters", json={"name": "x", "path": "dates"}), 403, code="permission_denied")
        assert_openai_error(tenant.post("/v1/unload_lora_adapter", json={"lora_name": "dates"}), 403)
    assert http.get("/v1/adapters/dates").status_code == 200  # nothing was unloaded
    assert_still_serving(http)


def test_tenant_sees_and_uses_only_its_models(server, http):
    with as_key(server, INFERENCE_KEY) as tenant:
        assert {m["id"] for m in tenant.get("/v1/models").json()["data"]} == {MODEL, "dates"}
        assert tenant.post("/v1/chat/completions", json=chat_body(model="dates", max_tokens=4)).status_code == 200
        denied = tenant.post("/v1/chat/completions", json=chat_body(model="units", max_tokens=4))
        assert_openai_error(denied, 403, "model", "permission_denied")
    assert_still_serving(http)


def test_requests_per_minute_limit_is_429_with_retry_after(server, http):
    with as_key(server, LIMITED_KEY) as tenant:
        for _ in range(2):
            assert tenant.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200
        limited = tenant.post("/v1/chat/completions", json=chat_body(max_tokens=2))
    assert_openai_error(limited, 429, code="rate_limit_exceeded")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert_still_serving(http)  # other tenants are unaffected


def test_tokens_per_minute_limit_counts_prompt_and_completion(server, http):
    with as_key(server, TOKEN_LIMITED_KEY) as tenant:  # 60 tokens/min; one chat is ~40 tokens
        first = tenant.post("/v1/chat/completions", json=chat_body(max_tokens=8))
        second = tenant.post("/v1/chat/completions", json=chat_body(max_tokens=8))
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] < 60 <= 2 * first.json()["usage"]["total_tokens"]
    # the second could use its prompt + 8 tokens, more than the minute has left: refused up front
    error = assert_openai_error(second, 429, code="rate_limit_exceeded")
    assert "may use up to" in error["message"]
    assert 1 <= int(second.headers["Retry-After"]) <= 60
    assert_still_serving(http)


def test_concurrent_requests_cannot_overshoot_the_token_limit(server, http):
    """Each request reserves prompt + max_tokens when admitted and settles at the end, so a burst
    sent all at once cannot spend more than tokens_per_minute between them."""
    async def burst():
        async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {BURST_KEY}"}, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=chat_body(max_tokens=40, ignore_eos=True))
                                          for _ in range(8)))

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    for r in responses:
        if r.status_code != 200:
            assert_openai_error(r, 429, code="rate_limit_exceeded")
    spent = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert 1 <= len(ok) < len(responses)
    assert spent <= 200  # without reservations all 8 were admitted: ~560 tokens
    assert_still_serving(http)


def test_tenant_names_are_unique_and_the_error_names_both_entries():
    from tuneserve.server.auth import KeysFile

    with pytest.raises(ValueError, match=r"keys\[0\] and keys\[2\] are both named 'team'"):
        KeysFile.model_validate({"keys": [{"name": "team", "key": "sk-00000001"}, {"name": "other", "key": "sk-00000002"},
                                          {"name": "team", "key": "sk-00000003"}]})
