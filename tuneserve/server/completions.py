"""POST /v1/completions (one or several prompts, `n` choices each)."""

from collections.abc import AsyncIterator
from typing import Any

from tuneserve.server.logprobs import completion_logprobs
from tuneserve.server.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_id,
    now_s,
)
from tuneserve.server.serving import OpenAIServing, primed_all
from tuneserve.server.sse import sse_stream


class CompletionServing:
    def __init__(self, serving: OpenAIServing):
        self.serving = serving

    async def create(self, request: CompletionRequest) -> CompletionResponse | AsyncIterator[str]:
        s = self.serving
        s.check_model(request.model)
        prompts = [s.encode_prompt(p) for p in request.prompts()]
        budgets = [s.fit_max_tokens(len(ids), request.max_tokens, "prompt") for ids in prompts]
        request_id = new_id("cmpl")
        streams = [
            s.generate(ids, request.to_sampling_params(budget, stream=request.stream), f"{request_id}-{i}")
            for i, (ids, budget) in enumerate(zip(prompts, budgets, strict=True))
        ]
        merged = _merge(await primed_all(streams))
        num_prompt_tokens = sum(len(ids) for ids in prompts)
        echoes = [s.tokenizer.decode(ids) if request.echo else "" for ids in prompts]
        if request.stream:
            return sse_stream(self._chunks(request, request_id, num_prompt_tokens, echoes, merged))
        return await self._response(request, request_id, num_prompt_tokens, echoes, merged)

    def _choice(self, request: CompletionRequest, index: int, o: Any, prefix: str, finish_reason) -> CompletionChoice:
        k = request.logprobs or 0
        logprobs = completion_logprobs(o.token_ids, o.logprobs, k, self.serving.tokenizer)
        return CompletionChoice(index=index, text=prefix + o.text, logprobs=logprobs, finish_reason=finish_reason)

    async def _response(self, request, request_id, num_prompt_tokens, echoes, merged) -> CompletionResponse:
        final: dict[int, tuple[int, Any]] = {}
        async for prompt_index, out in merged:
            for o in out.outputs:
                final[prompt_index * request.n + o.index] = (prompt_index, o)
        choices = [
            self._choice(request, i, o, echoes[p], o.finish_reason) for i, (p, o) in sorted(final.items())
        ]
        num_completion_tokens = sum(len(o.token_ids) for _, o in final.values())
        return CompletionResponse(
            id=request_id,
            created=now_s(),
            model=request.model,
            choices=choices,
            usage=Usage.of(num_prompt_tokens, num_completion_tokens),
        )

    async def _chunks(self, request, request_id, num_prompt_tokens, echoes, merged) -> AsyncIterator[CompletionResponse]:
        created = now_s()
        echoed: set[int] = set()
        num_completion_tokens = 0
        async for prompt_index, out in merged:
            for o in out.outputs:
                index = prompt_index * request.n + o.index
                prefix = "" if index in echoed else echoes[prompt_index]
                echoed.add(index)
                num_completion_tokens += len(o.token_ids)
                if prefix or o.text or o.finish_reason or (o.token_ids and request.logprobs is not None):
                    choice = self._choice(request, index, o, prefix, o.finish_reason)
                    yield CompletionResponse(id=request_id, created=created, model=request.model, choices=[choice])
        if request.include_usage:
            totals = Usage.of(num_prompt_tokens, num_completion_tokens)
            yield CompletionResponse(id=request_id, created=created, model=request.model, choices=[], usage=totals)


def _merge(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    from vllm.utils.async_utils import merge_async_iterators

    return merge_async_iterators(*streams)
