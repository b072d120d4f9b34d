"""POST /v1/chat/completions (with tool calls)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from tuneserve.server.chat_protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Delta,
    NamedToolChoice,
)
from tuneserve.server.logprobs import chat_logprobs, vllm_prompt_logprobs
from tuneserve.server.protocol import Usage, new_id, now_s
from tuneserve.server.serving import Choice, OpenAIServing, primed_all
from tuneserve.server.tools import ToolCallReader, chat_template, tool_constraint


class ChatServing:
    def __init__(self, serving: OpenAIServing):
        self.serving = serving

    def encode(self, request: ChatCompletionRequest) -> list[int]:
        """The prompt ids of a chat request: its messages, tools and template options."""
        s = self.serving
        tools = request.effective_tools()
        options = {
            "add_generation_prompt": request.add_generation_prompt,
            "add_special_tokens": request.add_special_tokens,
            "continue_final_message": request.continue_final_message or None,
            "tools": [t.model_dump(exclude_none=True) for t in tools] if tools and request.effective_tool_choice() != "none" else None,
            "chat_template": chat_template(s.tokenizer, request, s.model.chat_template),
        }
        messages = [m.to_template_dict() for m in request.messages]
        return s.encode_chat(messages, options, request.chat_template_kwargs, request.truncate_prompt_tokens)

    async def create(self, request: ChatCompletionRequest, ctx: Any) -> ChatCompletionResponse | AsyncIterator[ChatCompletionChunk]:
        """A response, or (stream=true) an iterator of chunks for the transport to frame."""
        s = self.serving
        lora_request = await ctx.target(request.model)
        prompt_ids = await asyncio.to_thread(self.encode, request)  # megabytes take seconds: off the event loop
        max_tokens = s.fit_max_tokens(len(prompt_ids), request.requested_max_tokens(), "messages")
        request_id = new_id("chatcmpl")
        params = request.to_sampling_params(max_tokens, structured=tool_constraint(request))
        await ctx.start_engine_requests(request.n, len(prompt_ids) * request.num_copies + max_tokens * request.n)
        (outputs,) = await primed_all([s.generate(prompt_ids, params, request_id, lora_request, ctx, request.cache_salt, request.num_copies)])
        if request.stream:
            return self._chunks(request, request_id, len(prompt_ids), outputs)
        return await self._response(request, request_id, len(prompt_ids), outputs)

    def reader(self, request: ChatCompletionRequest) -> ToolCallReader:
        return ToolCallReader(request, self.serving.model.tool_call_parser, self.serving.tokenizer)

    def _logprobs(self, request: ChatCompletionRequest, output: Any):
        return chat_logprobs(output.token_ids, output.logprobs, request.top_logprobs or 0, self.serving.tokenizer)

    async def _response(self, request, request_id, num_prompt_tokens, outputs) -> ChatCompletionResponse:
        choices: dict[int, Choice] = {}
        async with aclosing(outputs):
            async for out in outputs:
                for o in out.outputs:
                    choices.setdefault(o.index, Choice()).add(o, out)
        first = choices[min(choices)]
        return ChatCompletionResponse(
            id=request_id,
            created=now_s(),
            model=request.model,
            choices=[self._choice(request, i, c) for i, c in sorted(choices.items())],
            usage=Usage.of(num_prompt_tokens, sum(len(c.token_ids) for c in choices.values()), first.num_cached_tokens),
            prompt_logprobs=vllm_prompt_logprobs(first.prompt_logprobs),
        )

    def _choice(self, request: ChatCompletionRequest, index: int, c: Choice) -> ChatChoice:
        content, calls = self.reader(request).read(c.text)
        if request.echoed_text:
            content = request.echoed_text + (content or "")
        finish_reason = _finish_reason(request, c.finish_reason, bool(calls))
        message = ChatCompletionMessage.of(content, calls, request.uses_legacy_functions)
        return ChatChoice(index=index, message=message, logprobs=self._logprobs(request, c), finish_reason=finish_reason)

    async def _chunks(self, request, request_id, num_prompt_tokens, outputs) -> AsyncIterator[ChatCompletionChunk]:
        created = now_s()

        def chunk(choice: ChatChunkChoice | None, totals: Usage | None = None) -> ChatCompletionChunk:
            choices = [choice] if choice else []
            return ChatCompletionChunk(id=request_id, created=created, model=request.model, choices=choices, usage=totals)

        readers: dict[int, ToolCallReader] = {}
        num_completion_tokens = num_cached_tokens = 0
        async with aclosing(outputs):
            async for out in outputs:
                num_cached_tokens = max(num_cached_tokens, out.num_cached_tokens or 0)
                for o in out.outputs:
                    if o.index not in readers:
                        readers[o.index] = self.reader(request)
                        yield chunk(ChatChunkChoice(index=o.index, delta=Delta(role="assistant", content="")))
                        if request.echoed_text:
                            yield chunk(ChatChunkChoice(index=o.index, delta=Delta(content=request.echoed_text)))
                    num_completion_tokens += len(o.token_ids)
                    for piece in self._deltas(request, readers[o.index], o):
                        yield chunk(piece)
        if request.include_usage:
            yield chunk(None, Usage.of(num_prompt_tokens, num_completion_tokens, num_cached_tokens))

    def _deltas(self, request: ChatCompletionRequest, reader: ToolCallReader, o: Any) -> list[ChatChunkChoice]:
        """The chunks for one engine delta. finish_reason rides on the last one (as in vLLM): an
        empty chunk after it would add a zero gap to every client's inter-token latency."""
        content, calls = reader.feed(o.text)
        delta = _delta(request, content, calls)
        logprobs = self._logprobs(request, o) if o.token_ids and request.logprobs else None
        if delta is None and logprobs:
            delta = Delta(content="")
        pieces = [delta] if delta is not None else []
        if o.finish_reason:
            content, calls = reader.finish()
            pieces.append(_delta(request, content, calls))
            finish_reason = _finish_reason(request, o.finish_reason, reader.num_calls_sent > 0 or bool(calls))
        else:
            finish_reason = None
        pieces = [p for p in pieces if p is not None] or ([Delta()] if finish_reason else [])
        last = len(pieces) - 1
        return [
            ChatChunkChoice(index=o.index, delta=p, logprobs=logprobs if i == 0 else None, finish_reason=finish_reason if i == last else None)
            for i, p in enumerate(pieces)
        ]


def _delta(request: ChatCompletionRequest, content: str | None, calls: list) -> Delta | None:
    if calls and request.uses_legacy_functions:
        return Delta(content=content, function_call=calls[0].function)
    if calls:
        return Delta(content=content, tool_calls=calls)
    return Delta(content=content) if content else None


def _finish_reason(request: ChatCompletionRequest, engine_reason: str | None, has_calls: bool) -> str | None:
    """OpenAI reports "tool_calls" ("function_call" for legacy functions) when the model chose to
    call one; a call forced by naming the function ends with "stop"."""
    if has_calls and engine_reason == "stop" and not isinstance(request.effective_tool_choice(), NamedToolChoice):
        return "function_call" if request.uses_legacy_functions else "tool_calls"
    return engine_reason
