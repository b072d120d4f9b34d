"""POST /tokenize and /detokenize in vLLM's shapes: text or chat messages in, token ids out."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneserve.server.chat import ChatServing
from tuneserve.server.chat_protocol import ChatCompletionRequest, ChatMessage, Tool
from tuneserve.server.errors import BadRequestError


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


def tokenize(chat: ChatServing, request: TokenizeRequest, model: str) -> TokenizeResponse:
    s = chat.serving
    if request.messages is not None:
        ids = chat.encode(request.as_chat(model))
    else:
        ids = s.encode_prompt(request.prompt, request.add_special_tokens is not False)
    strs = s.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=s.model.max_model_len, tokens=ids, token_strs=strs)


def detokenize(chat: ChatServing, request: DetokenizeRequest) -> DetokenizeResponse:
    return DetokenizeResponse(prompt=chat.serving.tokenizer.decode(chat.serving.encode_prompt(request.tokens, param="tokens")))


def tokenizer_info(tokenizer: Any) -> dict:
    """vLLM's GET /tokenizer_info: the tokenizer's class, settings, special tokens and chat template."""
    info = {k: v for k, v in tokenizer.init_kwargs.items() if isinstance(v, str | int | float | bool | list) and k != "name_or_path"}
    info["added_tokens_decoder"] = {
        str(i): {"content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized, "single_word": t.single_word}
        for i, t in tokenizer.added_tokens_decoder.items()
    }
    return {**info, "tokenizer_class": type(tokenizer).__name__, "chat_template": tokenizer.chat_template}
