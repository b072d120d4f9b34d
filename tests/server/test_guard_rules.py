"""The guards' rules without a server: what text is scored, what counts as a leak, start-up errors."""

import pytest

from tuneserve.server.auth import KeysFile
from tuneserve.server.chat_protocol import ChatCompletionRequest
from tuneserve.server.completion_protocol import CompletionRequest
from tuneserve.server.guards import OutputChecker, OutputGuardSpec, load_guards, request_texts, system_texts
from tuneserve.server.responses_protocol import ResponsesRequest
from tuneserve.server.startup import StartupError

SYSTEM = "You are Ava, the assistant of the Lisbon Harbour Museum. Opening hours are 10:00 to 18:00, closed on Mondays."


def test_only_what_the_client_wrote_is_scored_and_system_prompts_are_the_operators():
    chat = ChatCompletionRequest(model="m", messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": [{"type": "text", "text": "part"}]},
    ])
    assert request_texts(chat) == ["hi", "part"] and system_texts(chat) == [SYSTEM]
    assert request_texts(CompletionRequest(model="m", prompt=["a", "b"])) == ["a", "b"]
    assert request_texts(CompletionRequest(model="m", prompt=[1, 2, 3])) == []
    responses = ResponsesRequest(model="m", instructions=SYSTEM, input=[{"role": "user", "content": [{"type": "input_text", "text": "q"}]}])
    assert request_texts(responses) == ["q"] and system_texts(responses) == [SYSTEM]


def test_a_leak_is_a_canary_or_32_characters_of_the_system_prompt_in_any_case_or_spacing():
    checker = OutputChecker(OutputGuardSpec(canaries=["ZEBRA-7731"], system_prompt=True), ["ZEBRA-7731", SYSTEM], "t")
    assert checker.leak("the code is zebra-7731.")
    assert checker.leak("As instructed: the assistant of the Lisbon   Harbour\nMuseum. Opening hours")
    assert not checker.leak("The museum opens at 10:00 and is closed on Mondays.")  # facts may be said, the text not
    assert not checker.leak("ZEBRA-77 31")


def test_start_up_errors_name_the_tenant_and_the_flag(tmp_path):
    keys = KeysFile.model_validate({"keys": [{"name": "team-a", "key": "sk-team-a-0001", "guards": {"input": {"threshold": 0.7}}}]})
    with pytest.raises(StartupError, match="tenant 'team-a' enables the input guard: pass --guard-model"):
        load_guards(None, keys.keys)
    with pytest.raises(StartupError, match="--guard-model .*not a classifier|--guard-model .*tuneserve.json"):
        load_guards(str(tmp_path), keys.keys)
    assert load_guards(None, []) is None
    with pytest.raises(ValueError, match="threshold"):
        KeysFile.model_validate({"keys": [{"name": "b", "key": "sk-b-00000001", "guards": {"input": {"threshold": 1.5}}}]})
