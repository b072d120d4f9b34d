"""Chat completions through the official openai client against the real server."""

import json

import pytest

from tests.helpers import MODEL

pytestmark = pytest.mark.engine

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_paris(openai_client):
    response = openai_client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=30)
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"
    assert response.object == "chat.completion"
    assert response.model == MODEL


def test_chat_stream_answers_paris(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=30, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(chunks) > 3  # really streamed, token by token


def test_greedy_output_is_identical_across_calls(openai_client):
    messages = [{"role": "user", "content": "Write two sentences about the sea."}]
    first, second = (
        openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48)
        for _ in range(2)
    )
    assert first.choices[0].message.content == second.choices[0].message.content
    assert len(first.choices[0].message.content) > 20


def test_n2_returns_two_choices(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a color."}], n=2, temperature=1.0, max_tokens=12
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content for c in response.choices)
    assert response.usage.completion_tokens >= 2


def test_stop_string_ends_output(openai_client):
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=60)
    assert "5" in full.choices[0].message.content
    stopped = openai_client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=60, stop=["5"]
    )
    text = stopped.choices[0].message.content
    assert "5" not in text
    assert full.choices[0].message.content.startswith(text)
    assert stopped.choices[0].finish_reason == "stop"


def test_json_mode_returns_parseable_json(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL,
        # json_object allows repeated keys: on the old prompt this 135M model's greedy answer (on this
        # machine's bf16 kernels) repeated "name"/"age" until max_tokens; asking for one object ends it.
        messages=[{"role": "user", "content": "Describe a cat as JSON with keys name and age. Answer with one object."}],
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_json_schema_output_follows_schema(openai_client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    response = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give the capital of France and its population."}],
        temperature=0,
        max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    data = json.loads(response.choices[0].message.content)
    assert set(data) == {"city", "population"}
    assert isinstance(data["population"], int)


def test_streamed_text_equals_non_streamed_text(openai_client):
    messages = [{"role": "user", "content": "Explain what a compiler does."}]
    whole = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=64)
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=64, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == whole.choices[0].message.content


def test_usage_counts_match_the_tokenizer(openai_client, tokenizer):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=30, logprobs=True
    )
    prompt_ids = tokenizer.apply_chat_template(CAPITAL, add_generation_prompt=True, tokenize=False)
    assert response.usage.prompt_tokens == len(tokenizer(prompt_ids, add_special_tokens=False).input_ids)
    # every generated token, the end-of-turn token included, has one logprob entry
    assert response.usage.completion_tokens == len(response.choices[0].logprobs.content)
    text_tokens = len(tokenizer(response.choices[0].message.content, add_special_tokens=False).input_ids)
    assert response.usage.completion_tokens == text_tokens + 1  # + <|im_end|>, stripped from text
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_stream_include_usage_sends_a_final_usage_chunk(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"


def test_logprobs_have_top_alternatives(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].token == entry.token
    assert "".join(e.token for e in content) == response.choices[0].message.content


def test_seed_makes_sampling_reproducible(openai_client):
    messages = [{"role": "user", "content": "Invent a name for a dragon."}]

    def sample(seed: int) -> str:
        reply = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=1.0, seed=seed, max_tokens=20)
        return reply.choices[0].message.content

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)  # it samples (greedy decoding would give one answer for every seed)


def test_max_completion_tokens_limits_length(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], temperature=0,
        max_completion_tokens=7,
    )
    assert response.usage.completion_tokens == 7
    assert response.choices[0].finish_reason == "length"


def test_penalties_change_greedy_output(openai_client):
    messages = [{"role": "user", "content": "Repeat the word cat many times."}]
    plain = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40)
    penalized = openai_client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=40, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert plain.choices[0].message.content != penalized.choices[0].message.content
