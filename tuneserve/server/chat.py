"""POST /v1/chat/completions."""

from collections.abc import AsyncIterator
from typing import Any

from tuneserve.server.logprobs import chat_logprobs
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
from tuneserve.server.serving import OpenAIServing, primed_all
from tuneserve.server.sse import sse_stream


class ChatServing:
    def __init__(self, serving: OpenAIServing):
        self.serving = serving

    async def create(self, request: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[str]:
        s = self.serving
        s.check_model(request.model)
        prompt_ids = s.encode_chat(request.messages)
        max_tokens = s.fit_max_tokens(len(prompt_ids), request.requested_max_tokens(), "messages")
        request_id = new_id("chatcmpl")
        params = request.to_sampling_params(max_tokens, stream=request.stream)
        (outputs,) = await primed_all([s.generate(prompt_ids, params, request_id)])
        if request.stream:
            return sse_stream(self._chunks(request, request_id, len(prompt_ids), outputs))
        return await self._response(request, request_id, len(prompt_ids), outputs)

    def _logprobs(self, request: ChatCompletionRequest, output: Any):
        return chat_logprobs(output.token_ids, output.logprobs, request.top_logprobs or 0, self.serving.tokenizer)

    async def _response(self, request, request_id, num_prompt_tokens, outputs) -> ChatCompletionResponse:
        final: dict[int, Any] = {}
        async for out in outputs:
            final.update({o.index: o for o in out.outputs})
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=o.text),
                logprobs=self._logprobs(request, o),
                finish_reason=o.finish_reason,
            )
            for i, o in sorted(final.items())
        ]
        num_completion_tokens = sum(len(o.token_ids) for o in final.values())
        return ChatCompletionResponse(
            id=request_id,
            created=now_s(),
            model=request.model,
            choices=choices,
            usage=Usage.of(num_prompt_tokens, num_completion_tokens),
        )

    async def _chunks(self, request, request_id, num_prompt_tokens, outputs) -> AsyncIterator[ChatCompletionChunk]:
        created = now_s()

        def chunk(choice: ChatChunkChoice | None, totals: Usage | None = None) -> ChatCompletionChunk:
            choices = [choice] if choice else []
            return ChatCompletionChunk(id=request_id, created=created, model=request.model, choices=choices, usage=totals)

        started: set[int] = set()
        num_completion_tokens = 0
        async for out in outputs:
            for o in out.outputs:
                if o.index not in started:
                    started.add(o.index)
                    yield chunk(_choice(o.index, Delta(role="assistant", content="")))
                num_completion_tokens += len(o.token_ids)
                if o.text or (o.token_ids and request.logprobs):
                    yield chunk(_choice(o.index, Delta(content=o.text), self._logprobs(request, o)))
                if o.finish_reason:
                    yield chunk(_choice(o.index, Delta(), finish_reason=o.finish_reason))
        if request.include_usage:
            yield chunk(None, Usage.of(num_prompt_tokens, num_completion_tokens))


def _choice(index: int, delta: Delta, logprobs=None, finish_reason: str | None = None) -> ChatChunkChoice:
    return ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
