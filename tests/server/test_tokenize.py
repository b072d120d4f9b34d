"""/tokenize and /detokenize in vLLM's shapes."""

import pytest

from tests.helpers import MODEL, assert_openai_error

pytestmark = pytest.mark.engine


def test_tokenize_text_matches_the_tokenizer(http, tokenizer):
    body = http.post("/tokenize", json={"model": MODEL, "prompt": "Hello world", "return_token_strs": True}).json()
    assert body["tokens"] == tokenizer("Hello world").input_ids
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 2048
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])


def test_tokenize_messages_counts_what_chat_bills(http, openai_client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    body = http.post("/tokenize", json={"model": MODEL, "messages": messages}).json()
    response = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert body["count"] == response.usage.prompt_tokens


def test_detokenize_inverts_tokenize(http):
    ids = http.post("/tokenize", json={"prompt": "Paris is lovely in spring."}).json()["tokens"]
    assert http.post("/detokenize", json={"model": MODEL, "tokens": ids}).json() == {"prompt": "Paris is lovely in spring."}


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        ("/tokenize", {"model": MODEL}, 400, None),
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, None),
        ("/tokenize", {"model": "no-such-model", "prompt": "a"}, 404, "model"),
        ("/detokenize", {"tokens": [10**9]}, 400, "tokens"),
    ],
)
def test_bad_tokenize_requests_get_openai_errors(http, path, body, status, param):
    assert_openai_error(http.post(path, json=body), status, param)
