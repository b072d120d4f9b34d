"""HTTP routes. Handlers fetch their serving object, await it and shape the response."""

import asyncio
from collections.abc import AsyncIterator, Awaitable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneserve import __version__
from tuneserve.server.errors import EngineDeadError, ServiceUnavailableError
from tuneserve.server.metrics import render_metrics
from tuneserve.server.protocol import ChatCompletionRequest, CompletionRequest

router = APIRouter()


async def cancel_on_disconnect(raw: Request, work: Awaitable):
    """Run `work`, cancelling it (and so aborting its engine request) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
    return task.result()


async def _wait_for_disconnect(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass


def respond(result) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream")
    return JSONResponse(result.model_dump(mode="json"))


def check_admitting(raw: Request) -> None:
    if not raw.app.state.is_ready:
        raise ServiceUnavailableError("The server is not accepting requests right now.")


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, raw: Request):
    check_admitting(raw)
    return respond(await cancel_on_disconnect(raw, raw.app.state.chat.create(body)))


@router.post("/v1/completions")
async def completions(body: CompletionRequest, raw: Request):
    check_admitting(raw)
    return respond(await cancel_on_disconnect(raw, raw.app.state.completions.create(body)))


@router.get("/v1/models")
async def list_models(raw: Request):
    return respond(raw.app.state.serving.list_models())


@router.get("/health")
async def health(raw: Request):
    engine = raw.app.state.serving.engine
    try:
        if engine.errored:
            raise RuntimeError("engine errored")
        await engine.check_health()
    except Exception:
        raise EngineDeadError("the inference engine is not running") from None
    return Response(status_code=200)


@router.get("/ready")
async def ready(raw: Request):
    check_admitting(raw)
    return {"status": "ready"}


@router.get("/version")
async def version(raw: Request):
    return {"version": __version__, "engine": raw.app.state.engine_version, "model": raw.app.state.serving.model.path}


@router.get("/metrics")
async def metrics(raw: Request):
    body, content_type = render_metrics(raw.app.state.serving.engine)
    return Response(body, media_type=content_type)
