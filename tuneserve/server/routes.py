"""OpenAI routes and probes. Handlers fetch their serving object, await it and shape the response."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tuneserve import __version__
from tuneserve.server.admission import authorize
from tuneserve.server.chat_protocol import ChatCompletionRequest
from tuneserve.server.completion_protocol import CompletionRequest
from tuneserve.server.errors import EngineDeadError, ServiceUnavailableError
from tuneserve.server.inference import run_inference
from tuneserve.server.metrics import render_metrics
from tuneserve.server.responses_protocol import ResponsesRequest
from tuneserve.server.tokenize import DetokenizeRequest, TokenizeRequest, detokenize, tokenize, tokenizer_info

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, raw: Request):
    return await run_inference(raw, body, raw.app.state.chat)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, raw: Request):
    return await run_inference(raw, body, raw.app.state.completions)


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, raw: Request):
    return await run_inference(raw, body, raw.app.state.responses)


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, raw: Request):
    tenant = authorize(raw, "inference")
    response = raw.app.state.responses.retrieve(response_id, tenant.name if tenant else None)
    return JSONResponse(response.model_dump(mode="json"))


@router.post("/tokenize")
async def tokenize_route(body: TokenizeRequest, raw: Request):
    model = checked_model(raw, body.model)
    return JSONResponse(tokenize(raw.app.state.chat, body, model).model_dump(mode="json"))


@router.post("/detokenize")
async def detokenize_route(body: DetokenizeRequest, raw: Request):
    checked_model(raw, body.model)
    return JSONResponse(detokenize(raw.app.state.chat, body).model_dump(mode="json"))


@router.get("/tokenizer_info")
async def tokenizer_info_route(raw: Request):
    authorize(raw, "inference")
    return JSONResponse(tokenizer_info(raw.app.state.serving.tokenizer))


def checked_model(raw: Request, name: str | None) -> str:
    """The request's model (default: the base), after the same key and existence checks as inference."""
    tenant = authorize(raw, "inference")
    serving = raw.app.state.serving
    name = name or serving.model.names[0]
    if tenant is not None:
        tenant.require_model(name)
    serving.require_known(name)
    return name


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
