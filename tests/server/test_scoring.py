"""Log-likelihood scoring and usage details: echo + logprobs, max_tokens 0, prompt_logprobs, n at temperature 0."""

import concurrent.futures
import math
import uuid

import pytest

from tests.helpers import MODEL, assert_still_serving

pytestmark = pytest.mark.engine

PROMPT = "The capital of France is"


def test_echo_logprobs_score_the_continuation_like_generation(openai_client, tokenizer):
    generated = openai_client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=6, logprobs=1)
    continuation = generated.choices[0].logprobs
    prompt_ids = tokenizer(PROMPT).input_ids
    full_ids = prompt_ids + tokenizer(generated.choices[0].text, add_special_tokens=False).input_ids
    assert len(full_ids) == len(prompt_ids) + len(continuation.tokens)  # the text re-tokenizes the same

    scored = openai_client.completions.create(model=MODEL, prompt=full_ids, echo=True, max_tokens=0, logprobs=1)
    choice = scored.choices[0]
    assert choice.text == tokenizer.decode(full_ids)
    assert choice.logprobs.token_logprobs[0] is None  # the first token has no context to score it
    assert choice.logprobs.tokens[len(prompt_ids):] == continuation.tokens
    tail = choice.logprobs.token_logprobs[len(prompt_ids):]
    assert math.isclose(sum(tail), sum(continuation.token_logprobs), abs_tol=0.05 * len(tail))
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == len(full_ids)


def test_echo_with_generation_returns_prompt_and_output_logprobs(openai_client, tokenizer):
    response = openai_client.completions.create(model=MODEL, prompt=PROMPT, echo=True, temperature=0, max_tokens=3, logprobs=0)
    lp = response.choices[0].logprobs
    num_prompt = len(tokenizer(PROMPT).input_ids)
    assert len(lp.tokens) == num_prompt + 3 and response.choices[0].text == "".join(lp.tokens)
    assert lp.top_logprobs[0] is None and all(lp.top_logprobs[1:])


def test_logprobs_zero_names_the_sampled_token(openai_client):
    lp = openai_client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=4, logprobs=0).choices[0].logprobs
    assert [list(top) for top in lp.top_logprobs] == [[t] for t in lp.tokens]
    assert [top[t] for top, t in zip(lp.top_logprobs, lp.tokens, strict=True)] == lp.token_logprobs


def test_prompt_logprobs_in_vllms_shape(openai_client, tokenizer):
    response = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, extra_body={"prompt_logprobs": 2})
    prompt_logprobs = response.choices[0].model_extra["prompt_logprobs"]
    ids = tokenizer(PROMPT).input_ids
    assert len(prompt_logprobs) == len(ids) and prompt_logprobs[0] is None
    for token_id, position in zip(ids[1:], prompt_logprobs[1:], strict=True):
        assert str(token_id) in position  # the actual prompt token, plus the top 2
        assert all({"logprob", "rank", "decoded_token"} <= set(v) for v in position.values())


def test_concurrent_scoring_on_a_lora_server_keeps_the_engine_alive(openai_client, http):
    # vLLM's CPU LoRA logits path crashed the engine core when two requests with prompt
    # logprobs shared a step (fixed by tuneserve's vLLM plugin); this server has LoRA enabled.
    prompts = [f"{PROMPT} Paris, and {i} plus {i} is {2 * i}." for i in range(6)]

    def score(prompt):
        return openai_client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=0, logprobs=1)

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(score, prompts))
    assert all(r.choices[0].logprobs.token_logprobs[0] is None for r in results)
    adapter = openai_client.completions.create(model="dates", prompt=PROMPT, echo=True, max_tokens=0, logprobs=1)
    base = results[0]
    assert adapter.choices[0].logprobs.token_logprobs != score(PROMPT).choices[0].logprobs.token_logprobs  # the adapter counts
    assert base.usage.prompt_tokens > 0
    assert_still_serving(http)


def test_n_with_temperature_zero_returns_n_identical_greedy_choices(openai_client):
    messages = [{"role": "user", "content": "Name a primary color."}]
    single = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    response = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, n=3)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert {c.message.content for c in response.choices} == {single.choices[0].message.content}
    assert response.usage.completion_tokens == 3 * single.usage.completion_tokens


def test_cached_tokens_count_prefix_cache_hits(openai_client):
    shared = f"Run {uuid.uuid4().hex}. " + "Here is a long shared system context about rivers and mountains. " * 20
    messages = [{"role": "system", "content": shared}, {"role": "user", "content": "Summarize."}]
    first = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2)
    second = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert 0.8 * second.usage.prompt_tokens <= second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
    assert second.usage.completion_tokens_details.reasoning_tokens == 0


def test_cache_salt_keeps_prefix_caches_apart(openai_client):
    messages = [{"role": "user", "content": f"Run {uuid.uuid4().hex}. " + "Tell me about lakes and seas. " * 20}]
    openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2)
    salted = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2, extra_body={"cache_salt": "tenant-b"})
    assert salted.usage.prompt_tokens_details.cached_tokens == 0
