"""Tool calling on chat: which template renders the tools, what constrains the output, how it is read.

`required` and a named function constrain decoding to the function's JSON schema through vLLM's
structured outputs (the schema comes from vLLM's own `get_json_schema_from_tools`), so even a
small model returns valid arguments. `auto` lets the model choose; its output is read by one of
vLLM's tool parsers (`--tool-call-parser`, default `hermes`): how often a model calls a tool
unprompted is the model's business.
"""

import json
import uuid
from functools import cache
from pathlib import Path
from typing import Any

from tuneserve.server.chat_protocol import (
    ChatCompletionRequest,
    FunctionCall,
    NamedToolChoice,
    ToolCall,
    ToolCallDelta,
)
from tuneserve.server.errors import BadRequestError

TOOLS_TEMPLATE = Path(__file__).parent / "templates" / "chatml_tools.jinja"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def needs_tool_template(request: ChatCompletionRequest) -> bool:
    """Tools to render, or tool turns in the history."""
    return bool(request.effective_tools()) or any(m.tool_calls or m.function_call or m.role in ("tool", "function") for m in request.messages)


def chat_template(tokenizer: Any, request: ChatCompletionRequest, override: str | None) -> str | None:
    """The server's --chat-template; else, for tool requests, ours when the model's cannot render tools."""
    if override is not None:
        return override
    own = tokenizer.chat_template or ""
    if needs_tool_template(request) and "tool" not in own:
        return TOOLS_TEMPLATE.read_text()
    return None


def tool_constraint(request: ChatCompletionRequest) -> dict | None:
    """Structured-output parameters for `required` / a named function; None for auto and none."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionNamedToolChoiceParam,
        ChatCompletionToolsParam,
    )
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    choice = request.effective_tool_choice()
    if choice in ("none", "auto"):
        return None
    tools = [ChatCompletionToolsParam.model_validate(t.model_dump(exclude_none=True)) for t in request.effective_tools()]
    if isinstance(choice, NamedToolChoice):
        choice = ChatCompletionNamedToolChoiceParam.model_validate(choice.model_dump())
    try:
        schema = get_json_schema_from_tools(choice, tools, request.parallel_tool_calls)
    except ValueError as e:
        raise BadRequestError(str(e), param="tools") from None
    return {"json": schema}


class ToolCallReader:
    """Reads one choice's output into content and tool calls, whole or as stream deltas."""

    def __init__(self, request: ChatCompletionRequest, parser_name: str, tokenizer: Any):
        self.request = request
        self.choice = request.effective_tool_choice()
        self.parser_name = parser_name
        self.tokenizer = tokenizer
        self.text = ""
        self.num_content_chars_sent = 0
        self.call_id = new_call_id()
        self.num_calls_sent = 0

    @property
    def is_active(self) -> bool:
        return self.choice != "none" and bool(self.request.effective_tools())

    # -- whole outputs --------------------------------------------------------------------

    def read(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a finished output."""
        if not self.is_active:
            return text, []
        if isinstance(self.choice, NamedToolChoice):
            if not _is_json(text):  # cut off by max_tokens: no call, and finish_reason "length" says why
                return "", []
            return "", [ToolCall(id=self.call_id, function=FunctionCall(name=self.choice.function.name, arguments=text))]
        if self.choice == "required":
            return "", _calls_from_array(text)
        return self._read_auto(text)

    def _read_auto(self, text: str) -> tuple[str | None, list[ToolCall]]:
        info = _parser(self.parser_name, self.tokenizer).extract_tool_calls(text, _vllm_request(self.request))
        if not info.tools_called:
            return text, []
        calls = [ToolCall(id=new_call_id(), function=FunctionCall(name=c.function.name, arguments=c.function.arguments)) for c in info.tool_calls]
        return info.content or None, calls

    # -- streams --------------------------------------------------------------------------

    def feed(self, delta_text: str) -> tuple[str | None, list[ToolCallDelta]]:
        """What to send for this piece of text: content and/or tool-call deltas."""
        self.text += delta_text
        if not self.is_active:
            return delta_text, []
        if isinstance(self.choice, NamedToolChoice):
            # The whole output is the arguments: stream them as they come.
            deltas = [] if self.num_calls_sent else [self._call_header(0, self.choice.function.name)]
            self.num_calls_sent = 1
            return None, deltas + ([ToolCallDelta(index=0, function={"arguments": delta_text})] if delta_text else [])
        if self.choice == "auto":
            return self._auto_content(), []
        return None, []  # required: the array is read whole when it ends

    def finish(self) -> tuple[str | None, list[ToolCallDelta]]:
        """The rest, once the output ended: calls that could only be read whole."""
        if not self.is_active or isinstance(self.choice, NamedToolChoice):
            return None, []
        content, calls = self.read(self.text)
        if not calls:  # auto and no call after all: release what was held back
            rest = (content or "")[self.num_content_chars_sent:]
            return rest or None, []
        return None, [
            ToolCallDelta(index=i, id=c.id, type="function", function={"name": c.function.name, "arguments": c.function.arguments})
            for i, c in enumerate(calls)
        ]

    def _call_header(self, index: int, name: str) -> ToolCallDelta:
        return ToolCallDelta(index=index, id=self.call_id, type="function", function={"name": name, "arguments": ""})

    def _auto_content(self) -> str | None:
        """Text before a (possible) tool call goes out as content; from the tag on it is held."""
        tag = "<tool_call>"
        end = self.text.find(tag)
        if end < 0:
            end = len(self.text)
            # hold back a suffix that may be the start of the tag
            for n in range(min(len(tag) - 1, len(self.text)), 0, -1):
                if tag.startswith(self.text[-n:]):
                    end -= n
                    break
        if end <= self.num_content_chars_sent:
            return None
        piece = self.text[self.num_content_chars_sent:end]
        self.num_content_chars_sent = end
        return piece

    @property
    def has_calls(self) -> bool:
        return self.is_active and bool(self.read(self.text)[1])


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _calls_from_array(text: str) -> list[ToolCall]:
    """The `required` output: a JSON array of {"name", "parameters"} (vLLM's schema for it).

    An array cut off by max_tokens still yields its complete items (finish_reason "length"
    tells the client the rest is missing).
    """
    decoder, items, pos = json.JSONDecoder(), [], text.find("[") + 1
    while 0 < pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            break
        items.append(item)
    return [
        ToolCall(id=new_call_id(), function=FunctionCall(name=item["name"], arguments=json.dumps(item.get("parameters", {}), ensure_ascii=False)))
        for item in items
        if isinstance(item, dict) and "name" in item
    ]


@cache
def _parser_class(name: str):
    from vllm.tool_parsers import ToolParserManager

    return ToolParserManager.get_tool_parser(name)


def _parser(name: str, tokenizer: Any):
    return _parser_class(name)(tokenizer)


def _vllm_request(request: ChatCompletionRequest):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VllmRequest

    tools = [t.model_dump(exclude_none=True) for t in request.effective_tools()]
    return VllmRequest.model_validate({"model": request.model, "messages": [{"role": "user", "content": ""}], "tools": tools, "tool_choice": "auto"})


def check_tool_parser(name: str) -> None:
    """Fail at start (not on the first request) for a parser name vLLM does not know."""
    from vllm.tool_parsers import ToolParserManager

    if name not in ToolParserManager.list_registered():
        raise ValueError(f"unknown tool call parser {name!r}; vLLM has: {', '.join(sorted(ToolParserManager.list_registered()))}")
