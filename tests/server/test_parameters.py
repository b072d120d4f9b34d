"""Every OpenAI parameter is accepted, vLLM's extensions work, and unknown names still fail."""

import pytest

from tests.helpers import MODEL, assert_openai_error, chat_body
from tuneserve.server.chat_protocol import ChatCompletionRequest
from tuneserve.server.completion_protocol import CompletionRequest
from tuneserve.server.protocol import VLLM_UNSUPPORTED
from tuneserve.server.responses_protocol import ResponsesRequest


def known_names(model) -> set[str]:
    return set(model.model_fields) | set(model.IGNORED) | set(VLLM_UNSUPPORTED)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (ChatCompletionRequest, "openai.types.chat.completion_create_params:CompletionCreateParamsBase"),
        (CompletionRequest, "openai.types.completion_create_params:CompletionCreateParamsBase"),
        (ResponsesRequest, "openai.types.responses.response_create_params:ResponseCreateParamsBase"),
    ],
)
def test_every_parameter_of_the_openai_sdk_is_known(ours, theirs):
    import importlib

    module, name = theirs.split(":")
    params = set(getattr(importlib.import_module(module), name).__annotations__)
    assert params - known_names(ours) == set()


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (ChatCompletionRequest, "vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionRequest"),
        (CompletionRequest, "vllm.entrypoints.openai.completion.protocol:CompletionRequest"),
    ],
)
def test_every_parameter_of_vllms_server_is_known(ours, theirs):
    import importlib

    module, name = theirs.split(":")
    assert set(getattr(importlib.import_module(module), name).model_fields) - known_names(ours) == set()


engine = pytest.mark.engine

OPENAI_ONLY = dict(
    reasoning_effort="low", verbosity="low", store=True, metadata={"team": "a"}, service_tier="auto", user="u1",
    prompt_cache_key="k", safety_identifier="s", prediction={"type": "content", "content": "x"},
    web_search_options={}, modalities=["text"], parallel_tool_calls=True, prompt_cache_retention="24h",
)


@engine
def test_openai_parameters_without_local_meaning_are_accepted(openai_client):
    response = openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, **OPENAI_ONLY)
    assert response.choices[0].message.content


@engine
def test_vllm_extensions_work_at_the_top_level(http):
    body = chat_body("Is Paris in France? Answer yes or no.", max_tokens=5, structured_outputs={"choice": ["yes", "no"]}, top_k=5, min_p=0.05, repetition_penalty=1.1, priority=0)
    assert http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] in ("yes", "no")
    legacy = chat_body("Pick a color.", max_tokens=5, guided_choice=["red", "blue"])
    assert http.post("/v1/chat/completions", json=legacy).json()["choices"][0]["message"]["content"] in ("red", "blue")


@engine
def test_allowed_token_ids_and_return_token_ids(http, tokenizer):
    allowed = tokenizer("yes no maybe", add_special_tokens=False).input_ids
    body = {"model": MODEL, "prompt": "Answer:", "max_tokens": 5, "allowed_token_ids": allowed, "return_token_ids": True}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["token_ids"] and set(choice["token_ids"]) <= set(allowed)
    assert choice["prompt_token_ids"] == tokenizer("Answer:").input_ids


@engine
@pytest.mark.parametrize(
    "body,param",
    [
        (chat_body(kv_transfer_params={"x": 1}), "kv_transfer_params"),
        (chat_body(max_tokenz=3), "max_tokenz"),
        (chat_body(tool_choice="required"), None),
        (chat_body(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools.0.function.name"),
    ],
)
def test_unsupported_and_unknown_names_still_fail(http, body, param):
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400, param)


@engine
def test_defaults_of_unsupported_vllm_extensions_are_accepted(http):
    body = chat_body(max_tokens=2, use_beam_search=False, length_penalty=1.0, vllm_xargs=None)
    assert http.post("/v1/chat/completions", json=body).status_code == 200


@engine
def test_chat_echo_and_continue_final_message(openai_client):
    messages = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "The capital of France is"}]
    extra = {"add_generation_prompt": False, "continue_final_message": True}
    plain = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=5, extra_body=extra)
    echoed = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=5, extra_body={**extra, "echo": True})
    assert "Paris" in plain.choices[0].message.content
    assert echoed.choices[0].message.content == "The capital of France is" + plain.choices[0].message.content


@engine
def test_tokenizer_info_describes_the_served_tokenizer(http, tokenizer):
    info = http.get("/tokenizer_info").json()
    assert info["tokenizer_class"] == type(tokenizer).__name__
    assert info["chat_template"] == tokenizer.chat_template
    assert info["added_tokens_decoder"][str(tokenizer.eos_token_id)]["content"] == tokenizer.eos_token
