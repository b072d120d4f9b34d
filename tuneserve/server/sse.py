"""Server-sent events in OpenAI's framing: `data: {json}` lines, then `data: [DONE]`."""

import contextlib
import json
from collections.abc import AsyncIterator

from pydantic import BaseModel

from tuneserve.server.errors import error_body, to_error

DONE = "data: [DONE]\n\n"


def sse_event(payload: BaseModel | dict, event: str | None = None) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


async def sse_stream(chunks: AsyncIterator[BaseModel], on_error=None) -> AsyncIterator[str]:
    """Frame chunks; an error after the stream began goes out as one error event, then [DONE].

    Events of the Responses API (chunks with a `type`) are named (`event: response.created`)
    and end without [DONE], as OpenAI sends them.
    """
    is_named = False
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                kind = chunk.root.get("type") if hasattr(chunk, "root") else None
                is_named = is_named or kind is not None
                yield sse_event(chunk, kind)
    except Exception as exc:  # CancelledError (client gone) is a BaseException and passes
        err = to_error(exc)
        if on_error is not None:
            on_error(err)
        yield sse_event(error_body(err.message, err.type, err.param, err.code), "error" if is_named else None)
    if not is_named:
        yield DONE
