"""POST /tokenize and /detokenize in vLLM's shapes: text or chat messages in, token ids out; and
vLLM's render endpoints (/v1/chat/completions/render, /v1/completions/render), which vllm-router
calls before routing so that its cache_aware policy matches replicas on token ids."""

import asyncio
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from tuneserve.server.chat import ChatServing
from tuneserve.server.chat_protocol import ChatCompletionRequest, ChatMessage, Tool
from tuneserve.server.completion_protocol import CompletionRequest
from tuneserve.server.errors import BadRequestError
from tuneserve.server.protocol import check_count


class TokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest (`prompt`) or TokenizeChatRequest (`messages`)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: True for prompts, False for chats (as vLLM)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    return_token_strs: bool = False

    def check_limits(self, config: Any) -> None:
        check_count(self.messages, config.max_messages, "messages", "messages")
        check_count(self.tools, config.max_tools, "tools", "tools")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self

    def as_chat(self, model: str) -> ChatCompletionRequest:
        fields = self.model_dump(exclude={"prompt", "return_token_strs", "model", "add_special_tokens"}, exclude_none=True)
        try:
            return ChatCompletionRequest.model_validate({**fields, "model": model, "add_special_tokens": bool(self.add_special_tokens)})
        except ValidationError as e:
            first = e.errors()[0]
            raise BadRequestError(first.get("msg", "invalid request").removeprefix("Value error, "), param="messages") from None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int] = Field(min_length=0)


class DetokenizeResponse(BaseModel):
    prompt: str


class Tokenizing:
    """POST /tokenize: through the request lifecycle like inference (a key's limits, admission)."""

    generates = False

    def __init__(self, chat: ChatServing):
        self.chat = chat

    async def create(self, request: TokenizeRequest, ctx) -> TokenizeResponse:
        s = self.chat.serving
        model = request.model or s.model.names[0]
        ctx.require_model(model)
        if request.messages is not None:
            ids = await asyncio.to_thread(self.chat.encode, request.as_chat(model))
        else:
            ids = await asyncio.to_thread(s.encode_prompt, request.prompt, request.add_special_tokens is not False)
        strs = s.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=s.model.max_model_len, tokens=ids, token_strs=strs)


class Detokenizing:
    """POST /detokenize: at most the model's context length of tokens."""

    generates = False

    def __init__(self, chat: ChatServing):
        self.chat = chat

    async def create(self, request: DetokenizeRequest, ctx) -> DetokenizeResponse:
        s = self.chat.serving
        ctx.require_model(request.model or s.model.names[0])
        check_count(request.tokens, s.model.max_model_len, "tokens", "tokens")
        return DetokenizeResponse(prompt=s.tokenizer.decode(s.encode_prompt(request.tokens, param="tokens")))


class Rendered(BaseModel):
    """The part of vLLM's GenerateRequest a router reads: the prompt's token ids."""

    request_id: str
    model: str
    token_ids: list[int]


class RenderedList(RootModel[list[Rendered]]):
    pass


class Rendering:
    """POST /v1/chat/completions/render and /v1/completions/render: the prompt ids the request
    would run with (a chat: one object; completions: one per prompt), nothing generated. The
    router renders every request before sending it: a render takes an admission slot like any
    request but does not count against the key's requests_per_minute (the request itself does)."""

    generates = False
    rate_limited = False

    def __init__(self, chat: ChatServing):
        self.chat = chat

    async def create(self, request: ChatCompletionRequest | CompletionRequest, ctx) -> Rendered | RenderedList:
        s = self.chat.serving
        ctx.require_model(request.model)
        if isinstance(request, ChatCompletionRequest):
            ids = await asyncio.to_thread(self.chat.encode, request)
            return Rendered(request_id=f"chatcmpl-{uuid.uuid4().hex}", model=request.model, token_ids=ids)
        prompts = await asyncio.to_thread(
            lambda: [s.encode_prompt(p, request.add_special_tokens, request.truncate_prompt_tokens) for p in request.prompts()])
        return RenderedList([Rendered(request_id=f"cmpl-{uuid.uuid4().hex}-{i}", model=request.model, token_ids=ids)
                             for i, ids in enumerate(prompts)])


def tokenizer_info(tokenizer: Any) -> dict:
    """vLLM's GET /tokenizer_info: the tokenizer's class, settings, special tokens and chat template."""
    info = {k: v for k, v in tokenizer.init_kwargs.items() if isinstance(v, str | int | float | bool | list) and k != "name_or_path"}
    info["added_tokens_decoder"] = {
        str(i): {"content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized, "single_word": t.single_word}
        for i, t in tokenizer.added_tokens_decoder.items()
    }
    return {**info, "tokenizer_class": type(tokenizer).__name__, "chat_template": tokenizer.chat_template}
