"""The part of serving every endpoint shares: model names, prompts, context limits, generation."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tuneserve.engine import Engine, chat_prompt_ids, tokens_prompt
from tuneserve.server.adapters import AdapterRegistry
from tuneserve.server.errors import (
    BadRequestError,
    ContextLengthError,
    ModelNotFoundError,
    ServerError,
    ServiceUnavailableError,
    to_error,
)
from tuneserve.server.metrics import BASE, RequestStats
from tuneserve.server.protocol import ModelCard, ModelList, now_s


@dataclass
class ServedModel:
    """The base model as clients see it."""

    names: list[str]
    path: str
    max_model_len: int
    max_tokens_cap: int | None = None
    chat_template: str | None = None  # --chat-template: replaces the model's own
    tool_call_parser: str = "hermes"
    created: int = field(default_factory=now_s)


@dataclass
class Choice:
    """One choice's deltas joined: what a non-streaming response returns."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[dict | None] | None = None
    num_cached_tokens: int = 0

    def add(self, delta: Any, output: Any = None) -> None:
        """One choice's delta; `output` (its RequestOutput) carries the per-prompt fields."""
        self.text += delta.text
        self.token_ids += delta.token_ids
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason
        if output is not None:
            self.prompt_logprobs = self.prompt_logprobs or output.prompt_logprobs
            self.num_cached_tokens = max(self.num_cached_tokens, output.num_cached_tokens or 0)


class OpenAIServing:
    """Owns the engine, tokenizer and adapter registry; endpoint classes build on it."""

    def __init__(self, engine: Engine, tokenizer: Any, model: ServedModel, adapters: AdapterRegistry | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model = model
        self.adapters = adapters

    # -- models -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def target(self, name: str, stats: RequestStats):
        """Resolve `model` to the base (None) or an adapter's LoRA request, held for the request."""
        if name in self.model.names:
            stats.adapter = BASE
            yield None
            return
        if self.adapters is not None and self.adapters.is_known(name):
            async with self.adapters.hold(name, load_if_missing=True) as version:
                stats.adapter = name
                yield version.lora_request()
            return
        raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model")

    def require_known(self, name: str) -> None:
        if name not in self.model.names and (self.adapters is None or not self.adapters.is_known(name)):
            raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model")

    def list_models(self, is_allowed=lambda name: True, show_paths: bool = True) -> ModelList:
        """The base's names and the loaded adapters a key may use; filesystem paths (`root`) only
        for keys that administer the server."""
        m = self.model
        cards = [ModelCard(id=n, created=m.created, root=m.path if show_paths else None, max_model_len=m.max_model_len) for n in m.names]
        for name, version in (self.adapters.current.items() if self.adapters else []):
            root = str(version.info.path) if show_paths else None
            cards.append(ModelCard(id=name, created=int(version.loaded_at), root=root, parent=m.names[0], max_model_len=m.max_model_len))
        return ModelList(data=[c for c in cards if is_allowed(c.id)])

    # -- prompts ------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict], options: dict[str, Any], extra_kwargs: dict[str, Any] | None = None, truncate_to: int | None = None) -> list[int]:
        """Messages through the chat template. `options` as chat_prompt_ids takes them; the client's
        `chat_template_kwargs` (`extra_kwargs`) reach the template as variables and override none of them."""
        options = {k: v for k, v in options.items() if v is not None}
        options.setdefault("chat_template", self.model.chat_template)
        variables = {k: v for k, v in (extra_kwargs or {}).items() if k not in options and k not in RESERVED_TEMPLATE_ARGS}
        try:
            ids = chat_prompt_ids(self.tokenizer, messages, **options, **variables)
        except Exception as e:  # the template's raise_exception(), e.g. roles out of order
            raise BadRequestError(f"could not apply the chat template: {e}", param="messages") from None
        return truncate(ids, truncate_to)

    def encode_prompt(
        self, prompt: str | list[int], add_special_tokens: bool = True, truncate_to: int | None = None, param: str = "prompt"
    ) -> list[int]:
        if isinstance(prompt, str):
            return truncate(self.tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids, truncate_to)
        vocab_size = len(self.tokenizer)
        if any(not 0 <= t < vocab_size for t in prompt):
            raise BadRequestError(f"token ids must be in [0, {vocab_size})", param=param)
        return truncate(prompt, truncate_to)

    def fit_max_tokens(self, num_prompt_tokens: int, requested: int | None, prompt_param: str) -> int:
        """The output budget: the request's if it fits the context and the cap, else a clear 400."""
        limit, cap = self.model.max_model_len, self.model.max_tokens_cap
        if cap is not None and requested is not None and requested > cap:
            raise BadRequestError(f"max_tokens {requested} is above this server's cap of {cap}", param="max_tokens")
        if num_prompt_tokens >= limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"has {num_prompt_tokens} tokens. Please shorten it.",
                param=prompt_param,
            )
        if requested is None:
            return min(limit - num_prompt_tokens, cap or limit)
        if num_prompt_tokens + requested > limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{num_prompt_tokens + requested} tokens ({num_prompt_tokens} in the prompt, "
                f"{requested} for the completion). Please reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        return requested

    # -- generation ---------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[int], params: Any, request_id: str, lora_request: Any, ctx: Any,
        cache_salt: str | None = None, num_copies: int = 1,
    ) -> AsyncIterator[Any]:
        """Engine outputs (deltas) for one prompt; engine errors come out as TuneserveErrors.

        `num_copies` > 1 runs the request that many times as choices 0..num_copies-1: how
        `n` > 1 works with greedy decoding, which vLLM's sampler refuses (OpenAI accepts it).
        The copies share the prompt's KV cache through the prefix cache. The request context
        (`ctx`, lifecycle.RequestContext) owns every stream: when the request ends, however it
        ends, each is closed, which aborts its engine request if it still runs.
        """
        if num_copies == 1:
            return ctx.own(self._generate(prompt_ids, params, request_id, lora_request, ctx.stats, cache_salt))
        copies = [ctx.own(self._generate(prompt_ids, params, f"{request_id}-c{i}", lora_request, ctx.stats, cache_salt)) for i in range(num_copies)]
        return _as_choices(copies)

    async def _generate(self, prompt_ids, params, request_id, lora_request, stats, cache_salt) -> AsyncIterator[Any]:
        stats.num_prompt_tokens += len(prompt_ids)
        prompt = tokens_prompt(prompt_ids, cache_salt)
        stream = self.engine.generate(prompt, params, request_id, lora_request=lora_request)
        try:
            async for output in stream:
                stats.on_output(sum(len(o.token_ids) for o in output.outputs))
                raise_if_failed(output)
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            raise to_error(e) from e
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()


# apply_chat_template's own arguments: a client's chat_template_kwargs must not reach them.
RESERVED_TEMPLATE_ARGS = {
    "conversation", "tools", "documents", "chat_template", "add_generation_prompt", "continue_final_message",
    "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
    "tokenizer_kwargs", "add_special_tokens", "messages", "tokenizer",
}


async def _as_choices(copies: list[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """Outputs of identical requests merged, copy i's (only) choice renumbered as choice i."""
    from vllm.utils.async_utils import merge_async_iterators

    merged = merge_async_iterators(*copies)
    try:
        async for i, output in merged:
            for o in output.outputs:
                o.index = i
            yield output
    finally:
        await merged.aclose()


def truncate(ids: list[int], keep: int | None) -> list[int]:
    """vLLM's truncate_prompt_tokens: keep the last `keep` tokens (-1 or None: all)."""
    return ids if keep is None or keep < 0 else ids[-keep:] if keep else []


def raise_if_failed(output: Any) -> None:
    """A request the engine itself ended ("abort", "error") is a failure, never a 200 with odd text.

    Aborts this server asks for (client gone, timeout) close the stream and are never seen here.
    """
    reasons = {o.finish_reason for o in output.outputs}
    if "error" in reasons:
        raise ServerError("The engine failed this request; retry it.")
    if "abort" in reasons:
        raise ServiceUnavailableError("The engine aborted this request; retry it.", retry_after_s=1)


async def primed_all(streams: list[AsyncIterator[Any]]) -> list[AsyncIterator[Any]]:
    """Wait for each stream's first output before answering.

    The engine validates a request when it is admitted (a bad structured-output schema, say);
    waiting turns those failures into a proper HTTP status instead of a mid-stream error event.
    The first failure cancels the others and closes every stream (aborting what started). Each
    returned iterator replays its first output.
    """
    try:
        firsts = await gather_or_cancel(*(_first(s) for s in streams))
    except BaseException:
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.aclose()
        raise
    return [_replay(first, stream) for first, stream in zip(firsts, streams, strict=True)]


async def gather_or_cancel(*awaitables: Any) -> list[Any]:
    """All results; the first failure cancels the rest (and waits for them to unwind) and is raised."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


_END = object()


async def _first(outputs: AsyncIterator[Any]) -> Any:
    return await anext(outputs, _END)


async def _replay(first: Any, outputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        if first is not _END:
            yield first
            async for item in outputs:
                yield item
    finally:
        await outputs.aclose()
