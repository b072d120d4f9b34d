"""Text completions through the official openai client against the real server."""

import pytest

from tests.helpers import MODEL

pytestmark = pytest.mark.engine


def test_completion_continues_the_prompt(openai_client):
    response = openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5
    )
    assert "Paris" in response.choices[0].text
    assert response.object == "text_completion"


def test_default_max_tokens_is_16(openai_client):
    response = openai_client.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert response.usage.completion_tokens == 16
    assert response.choices[0].finish_reason == "length"


def test_usage_prompt_tokens_match_the_tokenizer(openai_client, tokenizer):
    prompt = "Tokenizers split text into pieces"
    response = openai_client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=3)
    assert response.usage.prompt_tokens == len(tokenizer(prompt).input_ids)
    assert response.usage.completion_tokens == 3


def test_several_prompts_get_their_own_choices(openai_client):
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    response = openai_client.completions.create(model=MODEL, prompt=prompts, temperature=0, max_tokens=4)
    singles = [
        openai_client.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=4).choices[0].text
        for p in prompts
    ]
    assert [c.index for c in response.choices] == [0, 1]
    assert [c.text for c in response.choices] == singles


def test_token_id_prompt_equals_text_prompt(openai_client, tokenizer):
    prompt = "The capital of France is"
    by_text = openai_client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=5)
    by_ids = openai_client.completions.create(
        model=MODEL, prompt=tokenizer(prompt).input_ids, temperature=0, max_tokens=5
    )
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_stream_equals_non_stream(openai_client):
    kwargs = dict(model=MODEL, prompt="A haiku about autumn:", temperature=0, max_tokens=32)
    whole = openai_client.completions.create(**kwargs).choices[0].text
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole


def test_echo_prepends_the_prompt(openai_client):
    prompt = "The capital of France is"
    plain = openai_client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=4)
    echoed = openai_client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=4, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_logprobs_align_with_text(openai_client):
    response = openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=4, logprobs=2
    )
    lp = response.choices[0].logprobs
    text = response.choices[0].text
    assert "".join(lp.tokens) == text
    assert all(len(top) == 2 for top in lp.top_logprobs)
    # each offset points at its token in the text
    assert [text[o : o + len(t)] for o, t in zip(lp.text_offset, lp.tokens, strict=True)] == lp.tokens


def test_streamed_logprob_offsets_continue_across_chunks(openai_client):
    kwargs = dict(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, logprobs=1)
    whole = openai_client.completions.create(**kwargs).choices[0].logprobs
    chunks = [c.choices[0] for c in openai_client.completions.create(stream=True, **kwargs) if c.choices]
    offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
    assert offsets == whole.text_offset and len(set(offsets)) > 1  # not restarted at 0 in every chunk
