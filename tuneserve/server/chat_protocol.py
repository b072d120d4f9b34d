"""POST /v1/chat/completions: request (messages, tools, response formats) and response shapes."""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from tuneserve.server.protocol import (
    INT32_MAX,
    MAX_LOGPROBS,
    ChatLogprobs,
    DropNone,
    SamplingFields,
    Usage,
    check_count,
)


class FunctionDefinition(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # assistant turns echo back refusal, audio, annotations

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, v):
        if isinstance(v, list):
            for part in v:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "input_text", "output_text"):
                    raise ValueError(f"content part type {kind!r} is not supported (text only)")
            return [{**p, "type": "text"} for p in v]
        return v

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])

    def to_template_dict(self) -> dict:
        # Chat templates know "system"; OpenAI's newer "developer" role means the same, and the
        # legacy "function" role is a tool result.
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        message: dict[str, Any] = {"role": role, "content": self.text}
        calls = self.tool_calls or ([ToolCall(id="call_0", function=self.function_call)] if self.function_call else [])
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                for c in calls
            ]
        if self.tool_call_id or self.name:
            message["tool_call_id"], message["name"] = self.tool_call_id, self.name
        return message


def _arguments(text: str) -> Any:
    """Templates render arguments as JSON: an object where the string parses, else the string."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        return text


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None  # OpenAI's legacy names for tools
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    modalities: list[Literal["text"]] | None = None
    # vLLM's chat extensions
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.functions and self.tools:
            raise ValueError("give either tools or the legacy functions, not both")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message needs add_generation_prompt to be false")
        choice = self.effective_tool_choice()
        if choice not in (None, "none", "auto") and not self.effective_tools():
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in self.effective_tools()}:
            raise ValueError(f"tool_choice names '{choice.function.name}', which is not in tools")
        return self

    def check_limits(self, config: Any) -> None:
        super().check_limits(config)
        check_count(self.messages, config.max_messages, "messages", "messages")
        check_count(self.effective_tools(), config.max_tools, "functions" if self.functions else "tools", "tools")

    @property
    def echoed_text(self) -> str:
        """vLLM's chat `echo`: the last message's text when it is the assistant's (continued), else ""."""
        last = self.messages[-1]
        return last.text if self.echo and last.role == "assistant" else ""

    @property
    def uses_legacy_functions(self) -> bool:
        return bool(self.functions)

    def effective_tools(self) -> list[Tool]:
        """`tools`, or the legacy `functions` as tools."""
        return self.tools or [Tool(function=f) for f in self.functions or []]

    def effective_tool_choice(self) -> str | NamedToolChoice | None:
        """OpenAI's defaults: "auto" when tools are given, else "none"; legacy function_call mapped."""
        choice = self.tool_choice
        if self.functions:
            choice = self.function_call
            if isinstance(choice, NamedFunction):
                choice = NamedToolChoice(function=choice)
        if choice is None:
            return "auto" if self.effective_tools() else "none"
        return choice

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None



class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None

    @classmethod
    def of(cls, content: str | None, tool_calls: list[ToolCall], legacy: bool) -> "ChatCompletionMessage":
        if legacy and tool_calls:
            return cls(content=content, function_call=tool_calls[0].function)
        return cls(content=content, tool_calls=tool_calls or None)

    @model_serializer(mode="wrap")
    def _drop_unused(self, handler):
        # OpenAI always sends content (null beside tool calls) and leaves out unused call fields.
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k == "content"}


class ChatChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None
    prompt_logprobs: list[dict | None] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: list[dict | None] | None = None


class ToolCallDelta(DropNone):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str] | None = None


class Delta(DropNone):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: dict[str, str] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
