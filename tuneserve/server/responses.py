"""POST /v1/responses and GET /v1/responses/{id}: the Responses API on top of chat completions.

A response request becomes a chat request (responses_protocol.ResponsesRequest.to_chat), runs
through ChatServing (so adapters, tools, limits and metrics are the chat path's), and its result
is reshaped into output items, or, streaming, into the Responses event sequence.
"""

import itertools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from pydantic import RootModel, ValidationError

from tuneserve.server.chat import ChatServing
from tuneserve.server.chat_protocol import ChatCompletionChunk, ChatCompletionResponse
from tuneserve.server.errors import BadRequestError, NotFoundError
from tuneserve.server.protocol import Usage, new_id
from tuneserve.server.responses_protocol import ResponsesRequest, input_messages

logger = logging.getLogger("tuneserve.server")

class ResponseBody(RootModel[dict]):
    """A response object, returned as JSON."""


class ResponseEvent(RootModel[dict]):
    """One streamed event: framed as `event: <type>` + `data:`, with no [DONE] after the last."""


@dataclass
class Stored:
    owner: str | None
    response: dict
    messages: list[dict]  # the conversation so far, as chat messages (instructions not included)
    num_bytes: int = 0


class ResponseStore:
    """Responses kept for previous_response_id and GET, in memory, within a byte budget.

    Each key (owner) has a quota: past it, the key's own least recently used responses go, never
    another key's. Past the whole budget, the key holding the most gives up its least recently used.
    A response larger than a key's quota is not stored (a GET of it then answers 404).
    """

    def __init__(self, max_bytes: int = 256 << 20, max_bytes_per_owner: int = 32 << 20):
        self.max_bytes, self.max_bytes_per_owner = max_bytes, max_bytes_per_owner
        self.by_owner: dict[str | None, OrderedDict[str, Stored]] = {}
        self.num_bytes_by_owner: dict[str | None, int] = {}
        self.num_bytes = 0

    def put(self, response_id: str, stored: Stored) -> bool:
        stored.num_bytes = len(json.dumps(stored.response)) + len(json.dumps(stored.messages))
        if stored.num_bytes > self.max_bytes_per_owner:
            logger.info("response %s not stored: %d bytes, above a key's quota of %d", response_id, stored.num_bytes, self.max_bytes_per_owner)
            return False
        owner = stored.owner
        self.by_owner.setdefault(owner, OrderedDict())[response_id] = stored
        self._count(owner, stored.num_bytes)
        while self.num_bytes_by_owner[owner] > self.max_bytes_per_owner:
            self._evict_oldest(owner)
        while self.num_bytes > self.max_bytes:
            self._evict_oldest(max(self.num_bytes_by_owner, key=self.num_bytes_by_owner.get))
        return True

    def get(self, response_id: str, owner: str | None, param: str | None = None) -> Stored:
        items = self.by_owner.get(owner, {})
        stored = items.get(response_id)
        if stored is None:  # another tenant's response does not exist for you
            raise NotFoundError(f"Response with id '{response_id}' not found.", param=param)
        items.move_to_end(response_id)
        return stored

    def _evict_oldest(self, owner: str | None) -> None:
        _, stored = self.by_owner[owner].popitem(last=False)
        self._count(owner, -stored.num_bytes)

    def _count(self, owner: str | None, num_bytes: int) -> None:
        self.num_bytes += num_bytes
        self.num_bytes_by_owner[owner] = self.num_bytes_by_owner.get(owner, 0) + num_bytes
        if not self.by_owner[owner]:
            del self.by_owner[owner], self.num_bytes_by_owner[owner]


class ResponsesServing:
    def __init__(self, chat: ChatServing, store: ResponseStore):
        self.chat = chat
        self.store = store

    async def create(self, request: ResponsesRequest, ctx: Any):
        stats = ctx.stats
        history = self.store.get(request.previous_response_id, stats.owner, "previous_response_id").messages if request.previous_response_id else []
        try:
            chat_request = request.to_chat(history)
            conversation = history + input_messages(request.input)
        except (ValueError, ValidationError) as e:
            raise BadRequestError(_first_error(e), param="input") from None
        result = await self.chat.create(chat_request, ctx)
        response_id = new_id("resp")
        if request.stream:
            return self._events(request, response_id, conversation, stats.owner, result)
        output = _output_items(result)
        body = _response(request, response_id, _status(result.choices[0].finish_reason), output, result.usage)
        self._keep(request, body, conversation, stats.owner)
        return ResponseBody(body)

    def retrieve(self, response_id: str, owner: str | None) -> ResponseBody:
        return ResponseBody(self.store.get(response_id, owner).response)

    def _keep(self, request: ResponsesRequest, body: dict, conversation: list[dict], owner: str | None) -> None:
        if request.store:
            self.store.put(body["id"], Stored(owner, body, conversation + _as_messages(body["output"])))

    async def _events(self, request, response_id, conversation, owner, chunks: AsyncIterator[ChatCompletionChunk]):
        stream = EventStream(request, response_id)
        yield stream.event("response.created", response=stream.snapshot("in_progress"))
        yield stream.event("response.in_progress", response=stream.snapshot("in_progress"))
        finish_reason, usage = None, None
        async with aclosing(chunks):
            async for chunk in chunks:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    for event in stream.on_delta(choice.delta):
                        yield event
                    finish_reason = choice.finish_reason or finish_reason
        for event in stream.close_all():
            yield event
        body = stream.snapshot(_status(finish_reason), usage)
        self._keep(request, body, conversation, owner)
        yield stream.event(f"response.{body['status']}", response=body)


class EventStream:
    """Chat deltas -> Responses events: output items opened, filled and closed in order."""

    def __init__(self, request: ResponsesRequest, response_id: str):
        self.request, self.response_id = request, response_id
        self.numbers = itertools.count()
        self.output: list[dict] = []
        self.message: dict | None = None
        self.calls: dict[int, dict] = {}

    def event(self, kind: str, **fields) -> ResponseEvent:
        return ResponseEvent({"type": kind, "sequence_number": next(self.numbers), **fields})

    def snapshot(self, status: str, usage: Usage | None = None) -> dict:
        return _response(self.request, self.response_id, status, self.output, usage)

    def on_delta(self, delta) -> list[ResponseEvent]:
        events = []
        if delta.content:
            if self.message is None:
                events += self._open_message()
            self.message["content"][0]["text"] += delta.content
            events.append(self.event("response.output_text.delta", **self._where(self.message), content_index=0, delta=delta.content, logprobs=[]))
        for call in delta.tool_calls or []:
            if call.index not in self.calls:
                events += self._close_message()
                item = {"type": "function_call", "id": new_id("fc"), "call_id": call.id, "name": call.function["name"], "arguments": "", "status": "in_progress"}
                self.calls[call.index] = item
                events += self._add(item)
            item = self.calls[call.index]
            if call.function and call.function.get("arguments"):
                item["arguments"] += call.function["arguments"]
                events.append(self.event("response.function_call_arguments.delta", **self._where(item), delta=call.function["arguments"]))
        return events

    def close_all(self) -> list[ResponseEvent]:
        events = self._close_message()
        for item in self.calls.values():
            item["status"] = "completed"
            events.append(self.event("response.function_call_arguments.done", **self._where(item), name=item["name"], arguments=item["arguments"]))
            events.append(self.event("response.output_item.done", output_index=self.output.index(item), item=item))
        self.calls = {}
        return events

    def _where(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self.output.index(item)}

    def _add(self, item: dict) -> list[ResponseEvent]:
        self.output.append(item)
        return [self.event("response.output_item.added", output_index=len(self.output) - 1, item={**item, "content": []} if item["type"] == "message" else dict(item))]

    def _open_message(self) -> list[ResponseEvent]:
        self.message = _message_item("", "in_progress")
        events = self._add(self.message)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return events + [self.event("response.content_part.added", **self._where(self.message), content_index=0, part=part)]

    def _close_message(self) -> list[ResponseEvent]:
        item = self.message
        if item is None:
            return []
        self.message = None
        item["status"] = "completed"
        part = item["content"][0]
        where = self._where(item)
        return [
            self.event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[]),
            self.event("response.content_part.done", **where, content_index=0, part=part),
            self.event("response.output_item.done", output_index=where["output_index"], item=item),
        ]


def _message_item(text: str, status: str, logprobs: list | None = None) -> dict:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
    return {"type": "message", "id": new_id("msg"), "status": status, "role": "assistant", "content": [part]}


def _output_items(result: ChatCompletionResponse) -> list[dict]:
    choice = result.choices[0]
    items = []
    if choice.message.content:
        logprobs = [e.model_dump() for e in choice.logprobs.content] if choice.logprobs else None
        items.append(_message_item(choice.message.content, "completed", logprobs))
    for call in choice.message.tool_calls or []:
        items.append({"type": "function_call", "id": new_id("fc"), "call_id": call.id, "name": call.function.name, "arguments": call.function.arguments, "status": "completed"})
    return items


def _as_messages(output: list[dict]) -> list[dict]:
    """Output items as the chat messages that continue the conversation."""
    return input_messages([{k: v for k, v in item.items() if k != "id"} | ({"role": "assistant"} if item["type"] == "message" else {}) for item in output])


def _status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def _response(request: ResponsesRequest, response_id: str, status: str, output: list[dict], usage: Usage | None) -> dict:
    tool_choice = request.tool_choice if isinstance(request.tool_choice, str) else request.tool_choice.model_dump()
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": list(output),
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": tool_choice,
        "tools": [t.model_dump(exclude_none=True) for t in request.tools],
        "text": {"format": request.text.format.model_dump(by_alias=True, exclude_none=True)},
        "truncation": "disabled",
        "store": request.store,
        "metadata": request.metadata or {},
        "usage": _usage(usage),
    }


def _usage(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}".removeprefix(": ")
    return str(e)
