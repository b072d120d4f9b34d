"""POST /v1/responses: OpenAI's Responses API request, mapped onto a chat request.

Supported: text or item-list `input` (messages with text parts, `function_call` and
`function_call_output` items), `instructions`, function `tools` and `tool_choice`, `text.format`
(json_object / json_schema), sampling fields, `stream`, and `previous_response_id` for responses
this server stored (in memory; lost on restart). Built-in tools (web search, file search, code
interpreter, ...), background mode and conversations are refused by name.
"""

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneserve.server.chat_protocol import ChatCompletionRequest
from tuneserve.server.protocol import INT32_MAX, MAX_LOGPROBS, OPENAI_IGNORED, OpenAIRequest, StreamOptions, check_count

# OpenAI's limits on `metadata`.
MAX_METADATA_PAIRS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(BaseModel):
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `verbosity`: nothing to tune here

    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(OpenAIRequest):
    IGNORED: ClassVar[tuple[str, ...]] = tuple(
        n for n in OPENAI_IGNORED if n not in ("store", "metadata")
    ) + ("include", "reasoning", "truncation", "max_tool_calls", "context_management", "background_options", "access_programs", "image")

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = Field(default_factory=TextConfig)
    stream: bool = False
    stream_options: StreamOptions | None = None
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] | None = None
    background: bool = False
    conversation: Any = None
    prompt: Any = None

    @field_validator("tools", mode="before")
    @classmethod
    def _functions_only(cls, v):
        for tool in v if isinstance(v, list) else []:  # other types: pydantic's own type error
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(f"tool type {kind!r} is not supported (function tools only)")
        return v

    @field_validator("metadata")
    @classmethod
    def _openai_metadata_limits(cls, v):
        if v is None:
            return v
        if len(v) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs are allowed")
        for key, value in v.items():
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"keys must be at most {MAX_METADATA_KEY_CHARS} characters")
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"values must be at most {MAX_METADATA_VALUE_CHARS} characters (key {key!r})")
        return v

    def check_limits(self, config: Any) -> None:
        check_count(self.input if isinstance(self.input, list) else None, config.max_messages, "input", "items")
        check_count(self.tools, config.max_tools, "tools", "tools")

    @field_validator("background", "conversation", "prompt")
    @classmethod
    def _unsupported(cls, v, info):
        if v:
            raise ValueError(f"{info.field_name} is not supported by this server")
        return v

    def to_chat(self, history: list[dict]) -> ChatCompletionRequest:
        """The chat request that produces this response: `history` (from previous_response_id) + input."""
        messages = ([{"role": "system", "content": self.instructions}] if self.instructions else []) + history + input_messages(self.input)
        choice = self.tool_choice
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "logprobs": self.top_logprobs is not None,
            "top_logprobs": self.top_logprobs,
            "stream": self.stream,
            "stream_options": {"include_usage": True} if self.stream else None,
        }
        if self.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in self.tools]
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}} if isinstance(choice, FunctionToolChoice) else choice
            body["parallel_tool_calls"] = self.parallel_tool_calls
        fmt = self.text.format
        if fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt.type == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": fmt.name or "output", "schema": fmt.schema_ or {}, "strict": fmt.strict}}
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})


def input_messages(items: str | list[dict[str, Any]]) -> list[dict]:
    """Responses input items -> chat messages (function calls join the assistant turn before them)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise ValueError(f"input[{i}]: role must be user, assistant, system or developer")
            messages.append({"role": item.get("role"), "content": _text(item.get("content"), i)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function", "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _text(item.get("output"), i)})
        elif kind != "reasoning":  # reasoning items from other servers carry nothing a template renders
            raise ValueError(f"input[{i}]: item type {kind!r} is not supported")
    return messages


def _text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"input[{index}]: content must be a string or a list of text parts")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text", ""), str):
            raise ValueError(f"input[{index}]: content part {kind!r} is not supported (text only)")
        parts.append(part.get("text", ""))
    return "".join(parts)
