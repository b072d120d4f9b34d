"""The Responses API through the official openai client: create, stream, tools, stored conversations."""

import json

import jsonschema
import openai
import pytest

from tests.helpers import MODEL, assert_openai_error
from tests.server.test_tools import WEATHER

pytestmark = pytest.mark.engine

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}


def test_create_answers_like_chat(openai_client):
    question = "What is the capital of France?"
    response = openai_client.responses.create(model=MODEL, input=question, temperature=0, max_output_tokens=30)
    chat = openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=30)
    assert response.object == "response" and response.id.startswith("resp")
    assert response.output_text == chat.choices[0].message.content
    assert "Paris" in response.output_text
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens


def test_output_cut_by_max_output_tokens_is_incomplete(openai_client):
    response = openai_client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_instructions_and_message_list_input(openai_client):
    response = openai_client.responses.create(
        model=MODEL,
        instructions="You are a helpful assistant.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the capital of France?"}]}],
        temperature=0,
        max_output_tokens=30,
    )
    assert "Paris" in response.output_text
    assert response.instructions == "You are a helpful assistant."


def test_stream_sends_the_event_sequence_and_the_same_text(openai_client):
    kwargs = dict(model=MODEL, input="What is the capital of France?", temperature=0, max_output_tokens=40)
    whole = openai_client.responses.create(**kwargs)
    with openai_client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert whole.status == "completed"
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert kinds.count("response.output_text.delta") > 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text == final.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_named_function_call_is_schema_valid(openai_client, stream):
    kwargs = dict(model=MODEL, input="What's the weather in Paris?", tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "get_weather"}, temperature=0, max_output_tokens=80)
    if stream:
        with openai_client.responses.stream(**kwargs) as s:
            kinds = [e.type for e in s]
            response = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    else:
        response = openai_client.responses.create(**kwargs)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_previous_response_id_continues_the_conversation(openai_client, http):
    first = openai_client.responses.create(model=MODEL, input="What's the weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False, temperature=0, max_output_tokens=80)
    (call,) = [item for item in first.output if item.type == "function_call"]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temperature_c": 31})}
    second = openai_client.responses.create(model=MODEL, previous_response_id=first.id, input=[result], tools=[WEATHER_TOOL], temperature=0, max_output_tokens=30)
    assert second.previous_response_id == first.id
    # the stored turn and the tool result are both in the prompt: it is longer than either alone
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert openai_client.responses.retrieve(second.id).output_text == second.output_text


def test_unknown_previous_response_id_is_404(http):
    body = {"model": MODEL, "input": "hi", "previous_response_id": "resp-does-not-exist"}
    assert_openai_error(http.post("/v1/responses", json=body), 404, "previous_response_id")


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
        ({"model": MODEL, "input": [{"type": "input_image", "image_url": "x"}]}, "input"),
        ({"model": MODEL, "input": "hi", "background": True}, "background"),
        ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        # found by schema fuzzing: wrong shapes were 500s
        ({"model": MODEL, "input": "hi", "tools": 1.5}, "tools"),
        ({"model": MODEL, "input": [{"role": "user", "content": 5}]}, "input"),
        ({"model": MODEL, "input": [{"role": "user", "content": [7]}]}, "input"),
        ({"model": MODEL, "input": [{"role": 5, "content": "x"}]}, "input"),
    ],
)
def test_unsupported_responses_features_are_clear_400s(http, body, param):
    assert_openai_error(http.post("/v1/responses", json=body), 400, param)


def test_ignored_openai_parameters_are_accepted(openai_client):
    response = openai_client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=5, reasoning={"effort": "low"}, truncation="auto", include=["message.output_text.logprobs"], store=False)
    assert response.output_text
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(response.id)  # store=False keeps nothing
