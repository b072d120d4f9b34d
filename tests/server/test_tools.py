"""Tool calling through the official openai client on the real default model."""

import json

import jsonschema
import pytest

from tests.helpers import MODEL

pytestmark = pytest.mark.engine

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def assert_valid_calls(calls, names=None):
    assert calls, "no tool call returned"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_call_returns_schema_valid_arguments(openai_client):
    response = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=80)
    message = response.choices[0].message
    assert message.content == ""  # vLLM's choice for forced calls (OpenAI sends null): both are falsy
    assert_valid_calls(message.tool_calls, {"get_weather"})
    assert len(message.tool_calls) == 1
    assert response.choices[0].finish_reason == "stop"  # OpenAI's reason for a forced call


@pytest.mark.parametrize("parallel", [False, None])
def test_required_tool_call_returns_schema_valid_arguments(openai_client, parallel):
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    response = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=200, **extra)
    calls = response.choices[0].message.tool_calls
    assert_valid_calls(calls, set(SCHEMAS))
    if parallel is False:
        assert len(calls) == 1 and response.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("tool_choice", [NAMED, "required"])
def test_streamed_tool_call_deltas_add_up_to_the_same_call(openai_client, tool_choice):
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False, temperature=0, max_tokens=120)
    whole = openai_client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == json.loads(whole.function.arguments)
    jsonschema.validate(json.loads(arguments), WEATHER)
    if tool_choice == NAMED:
        assert len(deltas) > 3  # the arguments really streamed, piece by piece
    assert chunks[-1].choices[0].finish_reason in ("stop", "tool_calls")


def test_tool_result_round_trip(openai_client, http):
    first = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, temperature=0, max_tokens=80)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 31, "sky": "sunny"})},
    ]
    # the model sees the call and its result, rendered by the shipped ChatML tools template
    prompt = http.post("/tokenize", json={"model": MODEL, "messages": history, "tools": TOOLS, "return_token_strs": True}).json()
    text = "".join(prompt["token_strs"]).replace("Ġ", " ").replace("Ċ", "\n")
    assert "<tool_call>" in text and "<tool_response>" in text and "temperature_c" in text and "get_weather" in text
    answer = openai_client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, temperature=0, max_tokens=40)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.usage.prompt_tokens == prompt["count"]


HERMES_OUTPUT = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'


def auto_reader(tokenizer):
    from tuneserve.server.chat_protocol import ChatCompletionRequest
    from tuneserve.server.tools import ToolCallReader

    request = ChatCompletionRequest.model_validate({"model": MODEL, "messages": ASK, "tools": TOOLS})
    return ToolCallReader(request, "hermes", tokenizer)


def test_auto_reads_hermes_tool_calls_with_vllms_parser(tokenizer):
    # `auto` leaves the choice to the model (this 135M one answers in prose), so the reading of
    # a model that does call is checked on its output text, with vLLM's real hermes parser.
    content, calls = auto_reader(tokenizer).read(HERMES_OUTPUT)
    assert content == "Let me check."
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_auto_streams_content_and_holds_back_the_call(tokenizer):
    reader = auto_reader(tokenizer)
    pieces = [HERMES_OUTPUT[i : i + 3] for i in range(0, len(HERMES_OUTPUT), 3)]
    sent = "".join(content or "" for content, _ in map(reader.feed, pieces))
    assert sent == "Let me check."  # no fragment of "<tool_call>" leaks out as content
    _, deltas = reader.finish()
    assert [d.function["name"] for d in deltas] == ["get_weather"]


def test_auto_with_a_prose_answer_returns_content(openai_client):
    response = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=30)
    assert response.choices[0].message.content and response.choices[0].message.tool_calls is None


def test_tool_choice_none_answers_in_text(openai_client):
    response = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=20)
    assert response.choices[0].message.tool_calls is None
    assert response.choices[0].message.content


def test_legacy_functions_map_onto_tools(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, functions=[t["function"] for t in TOOLS], function_call={"name": "get_weather"}, temperature=0, max_tokens=80
    )
    message = response.choices[0].message
    assert message.tool_calls is None
    jsonschema.validate(json.loads(message.function_call.arguments), WEATHER)
    assert message.function_call.name == "get_weather"
