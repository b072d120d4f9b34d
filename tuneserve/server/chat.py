"""POST /v1/chat/completions."""

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from tuneserve.server.logprobs import chat_logprobs
from tuneserve.server.metrics import RequestStats
from tuneserve.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Delta,
    Usage,
    new_id,
    now_s,
)
from tuneserve.server.serving import Choice, OpenAIServing, primed_all


class ChatServing:
    def __init__(self, serving: OpenAIServing):
        self.serving = serving

    async def create(
        self, request: ChatCompletionRequest, lora_request: Any, stats: RequestStats
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionChunk]:
        """A response, or (stream=true) an iterator of chunks for the transport to frame."""
        s = self.serving
        prompt_ids = s.encode_chat(request.messages)
        max_tokens = s.fit_max_tokens(len(prompt_ids), request.requested_max_tokens(), "messages")
        request_id = new_id("chatcmpl")
        params = request.to_sampling_params(max_tokens)
        (outputs,) = await primed_all([s.generate(prompt_ids, params, request_id, lora_request, stats)])
        if request.stream:
            return self._chunks(request, request_id, len(prompt_ids), outputs)
        return await self._response(request, request_id, len(prompt_ids), outputs)

    def _logprobs(self, request: ChatCompletionRequest, output: Any):
        return chat_logprobs(output.token_ids, output.logprobs, request.top_logprobs or 0, self.serving.tokenizer)

    async def _response(self, request, request_id, num_prompt_tokens, outputs) -> ChatCompletionResponse:
        choices: dict[int, Choice] = {}
        async with aclosing(outputs):
            async for out in outputs:
                for o in out.outputs:
                    choices.setdefault(o.index, Choice()).add(o)
        return ChatCompletionResponse(
            id=request_id,
            created=now_s(),
            model=request.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=c.text),
                    logprobs=self._logprobs(request, c),
                    finish_reason=c.finish_reason,
                )
                for i, c in sorted(choices.items())
            ],
            usage=Usage.of(num_prompt_tokens, sum(len(c.token_ids) for c in choices.values())),
        )

    async def _chunks(self, request, request_id, num_prompt_tokens, outputs) -> AsyncIterator[ChatCompletionChunk]:
        created = now_s()

        def chunk(choice: ChatChunkChoice | None, totals: Usage | None = None) -> ChatCompletionChunk:
            choices = [choice] if choice else []
            return ChatCompletionChunk(id=request_id, created=created, model=request.model, choices=choices, usage=totals)

        started: set[int] = set()
        num_completion_tokens = 0
        async with aclosing(outputs):
            async for out in outputs:
                for o in out.outputs:
                    if o.index not in started:
                        started.add(o.index)
                        yield chunk(_choice(o.index, Delta(role="assistant", content="")))
                    num_completion_tokens += len(o.token_ids)
                    # finish_reason rides on the last token's chunk (as in vLLM): an empty chunk
                    # after it would add a zero gap to every client's inter-token latency.
                    if o.text or (o.token_ids and request.logprobs):
                        yield chunk(_choice(o.index, Delta(content=o.text), self._logprobs(request, o), o.finish_reason))
                    elif o.finish_reason:
                        yield chunk(_choice(o.index, Delta(), finish_reason=o.finish_reason))
        if request.include_usage:
            yield chunk(None, Usage.of(num_prompt_tokens, num_completion_tokens))


def _choice(index: int, delta: Delta, logprobs=None, finish_reason: str | None = None) -> ChatChunkChoice:
    return ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
