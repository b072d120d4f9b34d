"""POST /v1/completions (one or several prompts, `n` choices each; echo + logprobs scores prompts)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from tuneserve.server.completion_protocol import CompletionChoice, CompletionRequest, CompletionResponse
from tuneserve.server.logprobs import completion_logprobs, vllm_prompt_logprobs
from tuneserve.server.protocol import CompletionLogprobs, Usage, new_id, now_s
from tuneserve.server.serving import Choice, OpenAIServing, primed_all


class CompletionServing:
    def __init__(self, serving: OpenAIServing):
        self.serving = serving

    async def create(self, request: CompletionRequest, ctx: Any) -> CompletionResponse | AsyncIterator[CompletionResponse]:
        """A response, or (stream=true) an iterator of chunks for the transport to frame."""
        s = self.serving
        lora_request = await ctx.target(request.model)
        prompts = await asyncio.to_thread(  # megabytes of text take seconds: off the event loop
            lambda: [s.encode_prompt(p, request.add_special_tokens, request.truncate_prompt_tokens) for p in request.prompts()]
        )
        # Scoring only (echo, max_tokens 0) still runs one step: that step computes the prompt's logprobs.
        requested = 1 if request.is_scoring_only else request.max_tokens
        budgets = [s.fit_max_tokens(len(ids), requested, "prompt") for ids in prompts]
        request_id = new_id("cmpl")
        num_tokens = sum(len(ids) * request.num_copies + budget * request.n for ids, budget in zip(prompts, budgets, strict=True))
        await ctx.start_engine_requests(len(prompts) * request.n, num_tokens)
        streams = [
            s.generate(ids, request.to_sampling_params(budget), f"{request_id}-{i}", lora_request, ctx, request.cache_salt, request.num_copies)
            for i, (ids, budget) in enumerate(zip(prompts, budgets, strict=True))
        ]
        merged = _merge(await primed_all(streams))
        if request.stream:
            return self._chunks(request, request_id, prompts, merged)
        return await self._response(request, request_id, prompts, merged)

    def _choice(self, request: CompletionRequest, index: int, c: Choice, prompt: "PromptPart") -> CompletionChoice:
        tokenizer, k = self.serving.tokenizer, request.logprobs or 0
        token_ids, text = c.token_ids, c.text
        logprobs = None if c.logprobs is None else completion_logprobs(token_ids, c.logprobs, k, tokenizer, prompt.num_chars)
        if request.is_scoring_only:
            token_ids, text = [], ""
            logprobs = None if logprobs is None else CompletionLogprobs()
        if request.echo:
            text = prompt.text + text
            if logprobs is not None:
                logprobs = _joined(prompt.logprobs, logprobs)
        return CompletionChoice(
            index=index,
            text=text,
            logprobs=logprobs,
            finish_reason="length" if request.is_scoring_only else c.finish_reason,
            prompt_logprobs=prompt.vllm_prompt_logprobs,
            prompt_token_ids=prompt.ids if request.return_token_ids else None,
            token_ids=c.token_ids if request.return_token_ids else None,
        )

    def _prompt_part(self, request: CompletionRequest, ids: list[int], c: Choice) -> "PromptPart":
        """What every choice of one prompt shares, built once (not once per choice: n x a long prompt)."""
        tokenizer, k = self.serving.tokenizer, request.logprobs or 0
        text = tokenizer.decode(ids) if request.echo else ""
        logprobs = None
        if request.echo and request.logprobs is not None:
            logprobs = completion_logprobs(ids, list(c.prompt_logprobs or [None] * len(ids)), k, tokenizer)
        prompt_logprobs = vllm_prompt_logprobs(c.prompt_logprobs) if request.prompt_logprobs is not None else None
        num_chars = logprobs.text_offset[-1] + len(logprobs.tokens[-1]) if logprobs and logprobs.tokens else 0
        return PromptPart(ids, text, num_chars, logprobs, prompt_logprobs)

    async def _response(self, request, request_id, prompts, merged) -> CompletionResponse:
        choices: dict[int, tuple[int, Choice]] = {}
        async with aclosing(merged):
            async for prompt_index, out in merged:
                for o in out.outputs:
                    choices.setdefault(prompt_index * request.n + o.index, (prompt_index, Choice()))[1].add(o, out)
        num_completion_tokens = 0 if request.is_scoring_only else sum(len(c.token_ids) for _, c in choices.values())
        num_cached_tokens = sum({p: c.num_cached_tokens for p, c in choices.values()}.values())
        parts: dict[int, PromptPart] = {}
        for p, c in choices.values():
            if p not in parts:
                parts[p] = self._prompt_part(request, prompts[p], c)
        return CompletionResponse(
            id=request_id,
            created=now_s(),
            model=request.model,
            choices=[self._choice(request, i, c, parts[p]) for i, (p, c) in sorted(choices.items())],
            usage=Usage.of(sum(map(len, prompts)), num_completion_tokens, num_cached_tokens),
        )

    async def _chunks(self, request, request_id, prompts, merged) -> AsyncIterator[CompletionResponse]:
        created = now_s()
        tokenizer, k = self.serving.tokenizer, request.logprobs or 0
        echoes = [tokenizer.decode(ids) if request.echo else "" for ids in prompts]
        num_chars_sent: dict[int, int] = {}
        num_cached: dict[int, int] = {}
        num_completion_tokens = 0
        async with aclosing(merged):
            async for prompt_index, out in merged:
                num_cached[prompt_index] = max(num_cached.get(prompt_index, 0), out.num_cached_tokens or 0)
                for o in out.outputs:
                    index = prompt_index * request.n + o.index
                    prefix = "" if index in num_chars_sent else echoes[prompt_index]
                    offset = num_chars_sent.setdefault(index, 0)
                    num_completion_tokens += len(o.token_ids)
                    if request.is_scoring_only:
                        o.text, o.token_ids, o.logprobs = "", [], None
                    if prefix or o.text or o.finish_reason or (o.token_ids and request.logprobs is not None):
                        logprobs = completion_logprobs(o.token_ids, o.logprobs, k, tokenizer, offset + len(prefix))
                        choice = CompletionChoice(index=index, text=prefix + o.text, logprobs=logprobs, finish_reason=o.finish_reason)
                        num_chars_sent[index] += len(choice.text)
                        yield CompletionResponse(id=request_id, created=created, model=request.model, choices=[choice])
        if request.include_usage:
            num_completion_tokens = 0 if request.is_scoring_only else num_completion_tokens
            totals = Usage.of(sum(map(len, prompts)), num_completion_tokens, sum(num_cached.values()))
            yield CompletionResponse(id=request_id, created=created, model=request.model, choices=[], usage=totals)


@dataclass
class PromptPart:
    ids: list[int]
    text: str  # the echoed prompt ("" without echo)
    num_chars: int  # where the completion's logprob text offsets start (after the echoed prompt's tokens)
    logprobs: CompletionLogprobs | None  # the echoed prompt's, in OpenAI's shape
    vllm_prompt_logprobs: list[dict | None] | None


def _joined(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=a.tokens + b.tokens, token_logprobs=a.token_logprobs + b.token_logprobs,
        top_logprobs=a.top_logprobs + b.top_logprobs, text_offset=a.text_offset + b.text_offset,
    )


def _merge(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    from vllm.utils.async_utils import merge_async_iterators

    return merge_async_iterators(*streams)
