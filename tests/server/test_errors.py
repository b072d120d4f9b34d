"""Bad input gets OpenAI's error shape and the right status, and the server keeps serving."""

import openai
import pytest

from tests.helpers import MODEL, assert_openai_error, assert_still_serving, chat_body

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

# (name, path, json body, status, param, code)
BAD_JSON_BODIES = [
    ("wrong type for messages", CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages", None),
    ("wrong type for temperature", CHAT, chat_body(temperature="hot"), 400, "temperature", None),
    ("wrong type in a message", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, None, None),
    ("unknown role", CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None, None),
    ("unknown field", CHAT, chat_body(max_token=5), 400, "max_token", None),
    ("missing model", CHAT, {"messages": [{"role": "user", "content": "hi"}]}, 400, "model", None),
    ("empty messages", CHAT, {"model": MODEL, "messages": []}, 400, "messages", None),
    ("max_tokens zero", CHAT, chat_body(max_tokens=0), 400, "max_tokens", None),
    ("max_tokens negative", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400, "max_tokens", None),
    ("max_completion_tokens zero", CHAT, chat_body(max_completion_tokens=0), 400, "max_completion_tokens", None),
    ("temperature above 2", CHAT, chat_body(temperature=2.5), 400, "temperature", None),
    ("top_p zero", CHAT, chat_body(top_p=0), 400, "top_p", None),
    ("n zero", CHAT, chat_body(n=0), 400, "n", None),
    ("five stop strings", CHAT, chat_body(stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
    ("top_logprobs without logprobs", CHAT, chat_body(top_logprobs=2), 400, None, None),
    ("top_logprobs above 20", CHAT, chat_body(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
    ("stream_options without stream", CHAT, chat_body(stream_options={"include_usage": True}), 400, None, None),
    ("bad response_format type", CHAT, chat_body(response_format={"type": "yaml"}), 400, None, None),
    ("json_schema without schema", CHAT, chat_body(response_format={"type": "json_schema"}), 400, None, None),
    ("invalid json schema", CHAT, chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}), 400, None, None),
    ("tool_choice naming a missing tool", CHAT, chat_body(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "function", "function": {"name": "g"}}), 400, None, None),
    ("max_tokens 0 without echo", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, None, None),
    ("echo + logprobs + stream", COMPLETIONS, {"model": MODEL, "prompt": "hi", "echo": True, "logprobs": 1, "stream": True}, 400, None, None),
    ("prompt_logprobs above 20", COMPLETIONS, {"model": MODEL, "prompt": "hi", "prompt_logprobs": 21}, 400, "prompt_logprobs", None),
    ("beam search", CHAT, chat_body(use_beam_search=True), 400, "use_beam_search", None),
    ("image content", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, None, None),
    ("logit_bias key not a token id", CHAT, chat_body(logit_bias={"cat": 5}), 400, "logit_bias", None),
    ("unknown model", CHAT, chat_body(model="no-such-model"), 404, "model", "model_not_found"),
    ("unknown model (completions)", COMPLETIONS, {"model": "gpt-4", "prompt": "hi"}, 404, "model", "model_not_found"),
    ("prompt + max_tokens beyond context", CHAT, chat_body(max_tokens=5000), 400, "max_tokens", "context_length_exceeded"),
    ("prompt beyond context", COMPLETIONS, {"model": MODEL, "prompt": "hello " * 2100, "max_tokens": 1}, 400, "prompt", "context_length_exceeded"),
    ("token id outside vocab", COMPLETIONS, {"model": MODEL, "prompt": [1, 2, 10**9]}, 400, "prompt", None),
    ("empty prompt", COMPLETIONS, {"model": MODEL, "prompt": ""}, 400, "prompt", None),
    ("suffix", COMPLETIONS, {"model": MODEL, "prompt": "hi", "suffix": "bye"}, 400, None, None),
    ("body is a list", CHAT, [1, 2], 400, None, None),
]


@pytest.mark.parametrize("name,path,body,status,param,code", BAD_JSON_BODIES, ids=[b[0] for b in BAD_JSON_BODIES])
def test_bad_request_gets_openai_error(http, name, path, body, status, param, code):
    assert_openai_error(http.post(path, json=body), status, param, code)
    assert_still_serving(http)


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_json_is_400(http, stream):
    content = b'{"model": "smollm2-135m-instruct", "messages": [' + (b'"stream": true' if stream else b"")
    response = http.post(CHAT, content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, 400)
    assert_still_serving(http)


def test_oversized_body_is_413(http):
    body = chat_body(content="x" * (5 << 20))
    assert_openai_error(http.post(CHAT, json=body), 413, code="request_too_large")
    assert_still_serving(http)


def test_oversized_chunked_body_is_413(http):
    def chunks():  # no content-length: the server must count as it reads
        yield b'{"model": "smollm2-135m-instruct", "prompt": "'
        for _ in range(5):
            yield b"y" * (1 << 20)
        yield b'"}'

    response = http.post(COMPLETIONS, content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, code="request_too_large")
    assert_still_serving(http)


def test_unknown_route_and_wrong_method_are_openai_errors(http):
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.get(CHAT), 405)
    assert_still_serving(http)


def test_openai_client_raises_typed_errors(openai_client, http):
    with pytest.raises(openai.NotFoundError) as not_found:
        openai_client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100_000
        )
    assert bad.value.code == "context_length_exceeded"
    assert_still_serving(http)


def test_context_error_in_stream_request_is_a_status_not_an_event(http):
    response = http.post(CHAT, json=chat_body(max_tokens=5000, stream=True))
    assert_openai_error(response, 400, "max_tokens", "context_length_exceeded")
    assert_still_serving(http)
