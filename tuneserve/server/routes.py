"""OpenAI routes and probes. Handlers fetch their serving object, await it and shape the response."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tuneserve import __version__
from tuneserve.server.admission import authorize
from tuneserve.server.errors import EngineDeadError, ServiceUnavailableError
from tuneserve.server.inference import run_inference
from tuneserve.server.metrics import render_metrics
from tuneserve.server.protocol import ChatCompletionRequest, CompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, raw: Request):
    return await run_inference(raw, body, raw.app.state.chat)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, raw: Request):
    return await run_inference(raw, body, raw.app.state.completions)


@router.get("/v1/models")
async def list_models(raw: Request):
    tenant = authorize(raw, "inference")
    models = raw.app.state.serving.list_models(is_allowed=lambda name: tenant is None or tenant.may_use(name))
    return JSONResponse(models.model_dump(mode="json"))


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
    if raw.app.state.admission.is_draining:
        raise ServiceUnavailableError("The server is shutting down.", retry_after_s=10)
    return {"status": "ready"}


def authorize_probe(raw: Request) -> None:
    """/metrics and /version are open unless --metrics-auth: then any valid key reads them."""
    if raw.app.state.config.metrics_auth and raw.app.state.auth is not None:
        raw.app.state.auth.authenticate(raw.headers.get("authorization"))


@router.get("/version")
async def version(raw: Request):
    authorize_probe(raw)
    return {"version": __version__, "engine": raw.app.state.engine_version, "model": raw.app.state.serving.model.names[0]}


@router.get("/metrics")
async def metrics(raw: Request):
    authorize_probe(raw)
    body, content_type = render_metrics(raw.app.state.serving.engine.get_num_unfinished_requests())
    return Response(body, media_type=content_type)
