"""One inference request from admission to its last byte: auth, limits, adapter, timeout, metrics."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneserve.server.admission import authorize
from tuneserve.server.errors import RequestTimeoutError, status_of
from tuneserve.server.metrics import RequestStats
from tuneserve.server.sse import sse_stream

logger = logging.getLogger("tuneserve.server")
CLIENT_GONE = 499  # nginx's "client closed request"


async def run_inference(raw: Request, body: Any, endpoint: Any) -> Response:
    state = raw.app.state
    tenant = authorize(raw, "inference")
    stats = RequestStats(model=state.serving.model.names[0], owner=tenant.name if tenant else None)
    if body.ignored:
        logger.debug("ignored parameters (no effect on this server): %s", ", ".join(body.ignored))
    stack = contextlib.AsyncExitStack()
    status = 500
    try:
        if tenant is not None:
            tenant.require_model(body.model)
            tenant.admit()
            stats.reserve_tokens = lambda n: reserve_tokens(stats, tenant, n)
        state.admission.admit()
        stack.callback(state.admission.release)
        guards, headers, leaks = state.guards, {}, None
        if guards is not None:
            headers = await guards.check_input(body, tenant)
            leaks = guards.output_checker(body, tenant)
        lora_request = await stack.enter_async_context(state.serving.target(body.model, stats))
        deadline = _deadline(state.config.request_timeout_s)
        result = await _cancel_on_disconnect(raw, _within(endpoint.create(body, lora_request, stats), deadline))
        if result is None:
            status = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        if isinstance(result, AsyncIterator):
            if leaks is not None:
                result = leaks.wrap(result)
            stream, stack = _stream(result, deadline, stack, stats, tenant), None  # the stream owns cleanup
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        if leaks is not None:
            headers |= leaks.check_response(result)
        status = 200
        return JSONResponse(result.model_dump(mode="json"), headers=headers)
    except Exception as exc:
        status = status_of(exc)
        raise
    finally:
        if stack is not None:
            finish_request(stats, tenant, status)
            await stack.aclose()


async def _stream(chunks: AsyncIterator, deadline: float | None, stack, stats: RequestStats, tenant) -> AsyncIterator[str]:
    status = 200

    def on_error(err) -> None:
        nonlocal status
        status = err.status

    events = sse_stream(_until(chunks, deadline), on_error)
    try:
        async for event in events:
            yield event
    except (GeneratorExit, asyncio.CancelledError):
        status = CLIENT_GONE
        raise
    finally:
        # Close the chain down to the engine first: its abort lands before the admission slot
        # and the adapter hold are released (left to the garbage collector, it would come later).
        with contextlib.suppress(Exception):
            await events.aclose()
        finish_request(stats, tenant, status)
        await stack.aclose()


def reserve_tokens(stats: RequestStats, tenant, num_tokens: int) -> None:
    stats.num_reserved_tokens += tenant.reserve_tokens(num_tokens)


def finish_request(stats: RequestStats, tenant, status: int) -> None:
    stats.record(status)
    if tenant is not None:
        tenant.settle_tokens(stats.num_reserved_tokens, stats.num_prompt_tokens + stats.num_completion_tokens)


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s


async def _within(work: Awaitable, deadline: float | None):
    if deadline is None:
        return await work
    try:
        return await asyncio.wait_for(work, max(0.0, deadline - asyncio.get_running_loop().time()))
    except TimeoutError:
        raise RequestTimeoutError("The request took longer than this server's request timeout.") from None


async def _until(chunks: AsyncIterator, deadline: float | None) -> AsyncIterator:
    """`chunks`, aborted (the engine request with it) once the deadline passes."""
    try:
        while True:
            try:
                yield await _within(anext(chunks), deadline)
            except StopAsyncIteration:
                return
    finally:
        await chunks.aclose()


async def _cancel_on_disconnect(raw: Request, work: Awaitable):
    """Run `work`, cancelling it (and so aborting its engine request) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        # Wait for the cancelled work to unwind (which aborts its engine request) before the
        # caller releases the request's admission slot and adapter hold.
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def _wait_for_disconnect(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass
