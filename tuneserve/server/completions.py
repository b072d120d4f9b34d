"""POST /v1/completions (one or several prompts, `n` choices each)."""

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from tuneserve.server.logprobs import completion_logprobs
from tuneserve.server.metrics import RequestStats
from tuneserve.server.protocol import CompletionChoice, CompletionRequest, CompletionResponse, Usage, new_id, now_s
from tuneserve.server.serving import Choice, OpenAIServing, primed_all


class CompletionServing:
    def __init__(self, serving: OpenAIServing):
        self.serving = serving

    async def create(
        self, request: CompletionRequest, lora_request: Any, stats: RequestStats
    ) -> CompletionResponse | AsyncIterator[CompletionResponse]:
        """A response, or (stream=true) an iterator of chunks for the transport to frame."""
        s = self.serving
        prompts = [s.encode_prompt(p) for p in request.prompts()]
        budgets = [s.fit_max_tokens(len(ids), request.max_tokens, "prompt") for ids in prompts]
        request_id = new_id("cmpl")
        streams = [
            s.generate(ids, request.to_sampling_params(budget), f"{request_id}-{i}", lora_request, stats)
            for i, (ids, budget) in enumerate(zip(prompts, budgets, strict=True))
        ]
        merged = _merge(await primed_all(streams))
        num_prompt_tokens = sum(len(ids) for ids in prompts)
        echoes = [s.tokenizer.decode(ids) if request.echo else "" for ids in prompts]
        if request.stream:
            return self._chunks(request, request_id, num_prompt_tokens, echoes, merged)
        return await self._response(request, request_id, num_prompt_tokens, echoes, merged)

    def _choice(self, request: CompletionRequest, index: int, o: Any, prefix: str, text_offset: int = 0) -> CompletionChoice:
        """`text_offset`: characters of this choice already sent (streaming), where its logprob offsets start."""
        logprobs = completion_logprobs(o.token_ids, o.logprobs, request.logprobs or 0, self.serving.tokenizer, text_offset + len(prefix))
        return CompletionChoice(index=index, text=prefix + o.text, logprobs=logprobs, finish_reason=o.finish_reason)

    async def _response(self, request, request_id, num_prompt_tokens, echoes, merged) -> CompletionResponse:
        choices: dict[int, tuple[int, Choice]] = {}
        async with aclosing(merged):
            async for prompt_index, out in merged:
                for o in out.outputs:
                    choices.setdefault(prompt_index * request.n + o.index, (prompt_index, Choice()))[1].add(o)
        return CompletionResponse(
            id=request_id,
            created=now_s(),
            model=request.model,
            choices=[self._choice(request, i, c, echoes[p]) for i, (p, c) in sorted(choices.items())],
            usage=Usage.of(num_prompt_tokens, sum(len(c.token_ids) for _, c in choices.values())),
        )

    async def _chunks(self, request, request_id, num_prompt_tokens, echoes, merged) -> AsyncIterator[CompletionResponse]:
        created = now_s()
        num_chars_sent: dict[int, int] = {}
        num_completion_tokens = 0
        async with aclosing(merged):
            async for prompt_index, out in merged:
                for o in out.outputs:
                    index = prompt_index * request.n + o.index
                    prefix = "" if index in num_chars_sent else echoes[prompt_index]
                    offset = num_chars_sent.setdefault(index, 0)
                    num_completion_tokens += len(o.token_ids)
                    if prefix or o.text or o.finish_reason or (o.token_ids and request.logprobs is not None):
                        choice = self._choice(request, index, o, prefix, offset)
                        num_chars_sent[index] += len(choice.text)
                        yield CompletionResponse(id=request_id, created=created, model=request.model, choices=[choice])
        if request.include_usage:
            totals = Usage.of(num_prompt_tokens, num_completion_tokens)
            yield CompletionResponse(id=request_id, created=created, model=request.model, choices=[], usage=totals)


def _merge(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    from vllm.utils.async_utils import merge_async_iterators

    return merge_async_iterators(*streams)
