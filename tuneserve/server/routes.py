"""OpenAI routes and probes. Handlers fetch their serving object, await it and shape the response."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tuneserve import __version__
from tuneserve.server.admission import authorize
from tuneserve.server.chat_protocol import ChatCompletionRequest
from tuneserve.server.completion_protocol import CompletionRequest
from tuneserve.server.errors import EngineDeadError, ServiceUnavailableError
from tuneserve.server.lifecycle import run_request
from tuneserve.server.metrics import render_metrics
from tuneserve.server.responses_protocol import ResponsesRequest
from tuneserve.server.tokenize import DetokenizeRequest, TokenizeRequest, tokenizer_info

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, raw: Request):
    return await run_request(raw, body, raw.app.state.chat)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, raw: Request):
    return await run_request(raw, body, raw.app.state.completions)


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, raw: Request):
    return await run_request(raw, body, raw.app.state.responses)


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, raw: Request):
    tenant = authorize(raw, "inference")
    response = raw.app.state.responses.retrieve(response_id, tenant.name if tenant else None)
    return JSONResponse(response.model_dump(mode="json"))


@router.post("/v1/chat/completions/render")
async def render_chat(body: ChatCompletionRequest, raw: Request):
    return await run_request(raw, body, raw.app.state.rendering)


@router.post("/v1/completions/render")
async def render_completion(body: CompletionRequest, raw: Request):
    return await run_request(raw, body, raw.app.state.rendering)


@router.post("/tokenize")
async def tokenize_route(body: TokenizeRequest, raw: Request):
    return await run_request(raw, body, raw.app.state.tokenizing)


@router.post("/detokenize")
async def detokenize_route(body: DetokenizeRequest, raw: Request):
    return await run_request(raw, body, raw.app.state.detokenizing)


@router.get("/tokenizer_info")
async def tokenizer_info_route(raw: Request):
    authorize(raw, "inference")
    return JSONResponse(tokenizer_info(raw.app.state.serving.tokenizer))


@router.get("/v1/models")
async def list_models(raw: Request):
    tenant = authorize(raw, "inference")
    models = raw.app.state.serving.list_models(
        is_allowed=lambda name: tenant is None or tenant.may_use(name), show_paths=tenant is None or tenant.is_admin
    )
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


@router.get("/version")
async def version(raw: Request):
    return {"version": __version__, "engine": raw.app.state.engine_version, "model": raw.app.state.serving.model.names[0]}


@router.get("/metrics")
async def metrics(raw: Request):
    if raw.app.state.serving.adapters is not None:
        await raw.app.state.serving.adapters.refresh_resident()
    body, content_type = render_metrics(raw.app.state.serving.engine.get_num_unfinished_requests())
    return Response(body, media_type=content_type)
