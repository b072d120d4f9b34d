"""One request lifecycle for every route that does work (chat, completions, responses, arena
battles, tokenize, leaderboard): key, per-key limits, admission, caps, guards, adapter holds,
a wall-clock deadline (time blocked sending to the client included), disconnect, accounting.

Endpoints implement `create(body, ctx)` and return a response model or an iterator of chunks
(`generates = False` on an endpoint that runs no generation: no guards, no request metrics;
`rate_limited = False` on one not counted against a key's requests_per_minute: render);
everything they claim (engine slots, tokens, adapter holds, engine streams) is registered on the
`RequestContext` and given back, engine streams first, when the request ends however it ends.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneserve.server.admission import authorize
from tuneserve.server.errors import BadRequestError, RequestTimeoutError, status_of
from tuneserve.server.metrics import RequestStats
from tuneserve.server.sse import sse_stream

logger = logging.getLogger("tuneserve.server")
CLIENT_GONE = 499  # nginx's "client closed request"
DEADLINE_GRACE_S = 2.0  # past the deadline, a stream gets this long to send its timeout event


class RequestContext:
    """What one request holds while it runs; `stack` gives it all back, last claimed first."""

    def __init__(self, state: Any, tenant: Any, stats: RequestStats, deadline: float | None, generates: bool = True):
        self.state, self.tenant, self.stats, self.deadline = state, tenant, stats, deadline
        self.generates = generates  # False for routes that run no generation (tokenize): no guards, no request metrics
        self.stack = contextlib.AsyncExitStack()
        self.num_engine_requests = 0
        self.is_finished = False

    @property
    def serving(self) -> Any:
        return self.state.serving

    @property
    def config(self) -> Any:
        return self.state.config

    def require_model(self, name: str) -> None:
        """The key may use `name`, and it exists (403 / 404)."""
        if self.tenant is not None:
            self.tenant.require_model(name)
        self.serving.require_known(name)

    async def target(self, name: str) -> Any:
        """The base (None) or the adapter's LoRA request, held until the request ends."""
        if self.tenant is not None:
            self.tenant.require_model(name)
        return await self.stack.enter_async_context(self.serving.target(name, self.stats))

    async def start_engine_requests(self, num_requests: int, num_tokens: int) -> None:
        """Claim what `num_requests` engine requests may use, before the first one starts: the
        per-request fan-out cap, the key's tokens, the key's share of the batch (waiting for it
        if the key already runs its share), the server's engine slots."""
        cap = self.config.max_choices_per_request
        if self.num_engine_requests + num_requests > cap:
            raise BadRequestError(
                f"this request needs {self.num_engine_requests + num_requests} engine requests (prompts x n); "
                f"this server runs at most {cap} for one request", param="n",
            )
        if self.tenant is not None:
            self.stats.num_reserved_tokens += self.tenant.reserve_tokens(num_tokens)
            await self.tenant.slots.acquire(num_requests)
            self.stack.callback(self.tenant.slots.release, num_requests)
        self.state.admission.claim(num_requests)
        self.stack.callback(self.state.admission.unclaim, num_requests)
        self.num_engine_requests += num_requests

    def own(self, stream: AsyncIterator) -> AsyncIterator:
        """Close `stream` (aborting its engine request) when the request ends, started or not."""
        async def close() -> None:
            with contextlib.suppress(Exception):
                await stream.aclose()

        self.stack.push_async_callback(close)
        return stream

    async def finish(self, status: int) -> None:
        """Give everything back and account for the request (once; later calls do nothing)."""
        if self.is_finished:
            return
        self.is_finished = True
        await self.stack.aclose()  # engine streams are closed (aborted) before slots are released
        if self.generates:
            self.stats.record(status)
        if self.tenant is not None:
            self.tenant.settle_tokens(self.stats.num_reserved_tokens, self.stats.num_prompt_tokens + self.stats.num_completion_tokens)


async def run_request(raw: Request, body: Any, endpoint: Any) -> Response:
    """The one way a route runs work: see the module docstring."""
    state = raw.app.state
    tenant = authorize(raw, "inference")
    stats = RequestStats(model=state.serving.model.names[0], owner=tenant.name if tenant else None)
    ctx = RequestContext(state, tenant, stats, _deadline(state.config.request_timeout_s), getattr(endpoint, "generates", True))
    if getattr(body, "ignored", None):
        logger.debug("ignored parameters (no effect on this server): %s", ", ".join(body.ignored))
    status, is_streaming = 500, False
    try:
        if tenant is not None:
            if isinstance(getattr(body, "model", None), str):  # a 403 does not count against requests_per_minute
                tenant.require_model(body.model)
            if getattr(endpoint, "rate_limited", True):
                tenant.admit()
        state.admission.admit()
        ctx.stack.callback(state.admission.release)
        if hasattr(body, "check_limits"):
            body.check_limits(state.config)
        outcome = await _cancel_on_disconnect(raw, _within(_create(ctx, body, endpoint), ctx.deadline))
        if outcome is None:
            status = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        result, headers, leaks = outcome
        if isinstance(result, AsyncIterator):
            if leaks is not None:
                result = leaks.wrap(result)
            is_streaming = True  # from here the stream owns the context
            return BoundedStreamingResponse(
                _stream(result, ctx), ctx, state.config.send_timeout_s, media_type="text/event-stream", headers=headers
            )
        if leaks is not None:
            headers |= leaks.check_response(result)
        status = 200
        return JSONResponse(result.model_dump(mode="json"), headers=headers)
    except Exception as exc:
        status = status_of(exc)
        if getattr(exc, "num_tokens_scored", 0):  # the guard's work counts against the key's tokens
            stats.num_prompt_tokens += exc.num_tokens_scored
        raise
    finally:
        if not is_streaming:
            await ctx.finish(status)


async def _create(ctx: RequestContext, body: Any, endpoint: Any):
    guards, headers, leaks = ctx.state.guards, {}, None
    if guards is not None and ctx.generates:
        headers = await guards.check_input(body, ctx.tenant, ctx.config.max_guard_chars)
        leaks = guards.output_checker(body, ctx.tenant, ctx.config.max_guard_chars)
    return await endpoint.create(body, ctx), headers, leaks


async def _stream(chunks: AsyncIterator, ctx: RequestContext) -> AsyncIterator[str]:
    status = 200

    def on_error(err) -> None:
        nonlocal status
        status = err.status

    events = sse_stream(_until(chunks, ctx.deadline), on_error)
    try:
        async for event in events:
            yield event
    except (GeneratorExit, asyncio.CancelledError):
        status = CLIENT_GONE
        raise
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()
        await ctx.finish(status)


class BoundedStreamingResponse(StreamingResponse):
    """A stream that ends at the request's deadline (plus a grace for its timeout event) and when
    the client stops reading for `send_timeout_s`: a client that never reads cannot hold its slot,
    its adapter or its tokens. Whatever ends it, the chunk iterator is closed (which ends the request)."""

    def __init__(self, content: AsyncIterator, ctx: RequestContext, send_timeout_s: float, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.ctx = ctx
        self.deadline = None if ctx.deadline is None else ctx.deadline + DEADLINE_GRACE_S
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        async def bounded_send(message) -> None:
            async with asyncio.timeout(self.send_timeout_s):
                await send(message)

        try:
            async with asyncio.timeout_at(self.deadline):
                await super().__call__(scope, receive, bounded_send)
        except Exception as exc:  # TimeoutError (deadline, or a client not reading), a send on a closed socket
            logger.debug("stream ended early: %s", "client not reading or past the deadline" if isinstance(exc, TimeoutError) else type(exc).__name__)
        finally:
            await self.body_iterator.aclose()
            await self.ctx.finish(CLIENT_GONE)  # only if the stream never started: it finishes itself


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s


async def _within(work: Awaitable, deadline: float | None):
    if deadline is None:
        return await work
    try:
        async with asyncio.timeout_at(deadline):
            return await work
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
    """Run `work`, cancelling it (and so aborting its engine requests) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        # Wait for the cancelled work to unwind before the caller releases the request's holds.
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def _wait_for_disconnect(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass
