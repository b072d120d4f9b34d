"""The part of serving every endpoint shares: model names, prompts, context limits, generation."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tuneserve.server.engine import Engine, tokens_prompt
from tuneserve.server.errors import BadRequestError, ContextLengthError, ModelNotFoundError, to_error
from tuneserve.server.protocol import ChatMessage, ModelCard, ModelList, now_s


@dataclass
class ServedModel:
    """The base model as clients see it."""

    names: list[str]
    path: str
    max_model_len: int
    created: int = field(default_factory=now_s)


class OpenAIServing:
    """Owns the engine and tokenizer; endpoint classes build on it."""

    def __init__(self, engine: Engine, tokenizer: Any, model: ServedModel):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model = model

    # -- models -------------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name not in self.model.names:
            raise ModelNotFoundError(
                f"The model `{name}` does not exist. Available: {', '.join(self.model.names)}",
                param="model",
            )

    def list_models(self) -> ModelList:
        m = self.model
        cards = [ModelCard(id=n, created=m.created, root=m.path, max_model_len=m.max_model_len) for n in m.names]
        return ModelList(data=cards)

    # -- prompts ------------------------------------------------------------------------

    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                [m.to_template_dict() for m in messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # the template's raise_exception(), e.g. roles out of order
            raise BadRequestError(f"could not apply the chat template: {e}", param="messages") from None
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids
        vocab_size = len(self.tokenizer)
        if any(not 0 <= t < vocab_size for t in prompt):
            raise BadRequestError(f"token ids must be in [0, {vocab_size})", param="prompt")
        return prompt

    def fit_max_tokens(self, num_prompt_tokens: int, requested: int | None, prompt_param: str) -> int:
        """The output budget: the request's if it fits in the context, else a clear 400."""
        limit = self.model.max_model_len
        if num_prompt_tokens >= limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"has {num_prompt_tokens} tokens. Please shorten it.",
                param=prompt_param,
            )
        if requested is None:
            return limit - num_prompt_tokens
        if num_prompt_tokens + requested > limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{num_prompt_tokens + requested} tokens ({num_prompt_tokens} in the prompt, "
                f"{requested} for the completion). Please reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        return requested

    # -- generation ---------------------------------------------------------------------

    async def generate(
        self, prompt_ids: list[int], params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        """Engine outputs for one prompt; engine errors come out as TuneserveErrors.

        Closing this iterator early (client gone) closes vLLM's, which aborts the request.
        """
        stream = self.engine.generate(
            tokens_prompt(prompt_ids), params, request_id, lora_request=lora_request
        )
        try:
            async for output in stream:
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            raise to_error(e) from e
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()


async def primed_all(streams: list[AsyncIterator[Any]]) -> list[AsyncIterator[Any]]:
    """Wait for each stream's first output before answering.

    The engine validates a request when it is admitted (a bad structured-output schema, say);
    waiting turns those failures into a proper HTTP status instead of a mid-stream error event.
    Each returned iterator replays its first output.
    """
    results = await asyncio.gather(*(_primed(s) for s in streams), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for r in results:
            if not isinstance(r, BaseException):
                await r.aclose()
        raise failures[0]
    return results


async def _primed(outputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        first = await anext(outputs)
    except StopAsyncIteration:
        first = None

    async def replay():
        try:
            if first is not None:
                yield first
                async for item in outputs:
                    yield item
        finally:
            await outputs.aclose()

    return replay()
