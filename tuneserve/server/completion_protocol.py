"""POST /v1/completions: request and response shapes (the streamed chunk is the same object)."""

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from tuneserve.server.protocol import INT32_MAX, MAX_LOGPROBS, CompletionLogprobs, SamplingFields, Usage, check_count


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's default is 16; 0 with echo scores the prompt without generating (log-likelihoods).
    max_tokens: int | None = Field(16, ge=0, le=INT32_MAX)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=128)
    suffix: str | None = None
    add_special_tokens: bool = True

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, str | list) and len(v) == 0:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and any(isinstance(p, list | str) and len(p) == 0 for p in v):
            raise ValueError("prompts must not be empty")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of must equal n (best-of search is not supported)")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 is only allowed with echo (to score the prompt)")
        if self.echo and self.logprobs is not None and self.stream:
            raise ValueError("echo with logprobs is not available when stream is true")
        return self

    def check_limits(self, config: Any) -> None:
        super().check_limits(config)
        check_count(self.prompts(), config.max_choices_per_request, "prompt", "prompts")

    @property
    def is_scoring_only(self) -> bool:
        """echo + max_tokens 0: return the prompt (and its logprobs), generate nothing."""
        return self.echo and self.max_tokens == 0

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: each item is text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [p]
        return list(p)

    def num_logprobs(self) -> int | None:
        return self.logprobs

    def num_prompt_logprobs(self) -> int | None:
        if self.prompt_logprobs is None and self.echo:
            return self.logprobs
        return self.prompt_logprobs


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[dict | None] | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class CompletionResponse(BaseModel):
    """Also the streamed chunk shape (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
