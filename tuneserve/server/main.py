"""`tuneserve serve`: resolve the model, start vLLM in-process, load adapters, run uvicorn."""

import asyncio
import logging
import signal
from pathlib import Path

import uvicorn

from tuneserve.server.config import ServeConfig

logger = logging.getLogger("tuneserve.server")


def serve(config: ServeConfig) -> None:
    """Serve `config.model` until SIGINT/SIGTERM (SIGTERM drains in-flight requests first)."""
    from tuneserve.models import resolve_model
    from tuneserve.server.auth import Authenticator

    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    model_dir = resolve_model(config.model)
    auth = Authenticator.from_settings(config.api_key, Path(config.api_keys) if config.api_keys else None)
    asyncio.run(_serve(config, model_dir, auth))


def served_base(names: list[str], model_dir: Path):
    from tuneserve.models import model_fingerprint
    from tuneserve.models.facts import safetensors_header, weight_files
    from tuneserve.server.adapter_checks import ServedBase

    shapes = {}
    for path in weight_files(model_dir):
        _, header = safetensors_header(path)
        shapes |= {k.removesuffix(".weight"): t["shape"] for k, t in header.items() if k.endswith(".weight")}
    return ServedBase(names, model_dir, model_fingerprint(model_dir), shapes)


async def _serve(config: ServeConfig, model_dir: Path, auth) -> None:
    from transformers import AutoTokenizer

    from tuneserve.server.adapters import AdapterRegistry
    from tuneserve.server.app import create_app
    from tuneserve.server.engine import build_engine
    from tuneserve.server.serving import ServedModel

    engine = build_engine(config, model_dir)
    try:
        adapters = None
        if config.is_lora_enabled:
            adapters = AdapterRegistry(engine, served_base(config.model_names, model_dir), config.max_lora_rank)
            for name, path in config.adapters.items():
                await adapters.load(name, Path(path).expanduser().resolve())
        model = ServedModel(
            names=config.model_names, path=str(model_dir),
            max_model_len=engine.model_config.max_model_len, max_tokens_cap=config.max_tokens_cap,
        )
        app = create_app(config, engine, AutoTokenizer.from_pretrained(model_dir), model, adapters, auth)
        # The drain already waited for requests; past it, uvicorn must not wait on open sockets.
        uvicorn_config = uvicorn.Config(
            app, host=config.host, port=config.port, log_level=config.log_level, timeout_graceful_shutdown=5
        )
        server = DrainingServer(uvicorn_config, app.state.admission, config.drain_timeout_s)
        logger.info("serving %s at http://%s:%d/v1", ", ".join(model.names), config.host, config.port)
        await server.serve()
    finally:
        engine.shutdown()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM first drains: new requests get 503 while requests
    in flight finish (up to `drain_timeout_s`); then it stops and the process exits 0.
    A second SIGTERM, or SIGINT, stops at once."""

    def __init__(self, config: uvicorn.Config, admission, drain_timeout_s: float):
        super().__init__(config)
        self.admission = admission
        self.drain_timeout_s = drain_timeout_s
        self._drain_task = None

    def handle_exit(self, sig, frame):
        if sig != signal.SIGTERM or self._drain_task is not None:
            return super().handle_exit(sig, frame)
        self._drain_task = asyncio.get_event_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self):
        logger.info("SIGTERM: draining %d in-flight requests", self.admission.num_in_flight)
        is_drained = await self.admission.drain(self.drain_timeout_s)
        if is_drained:
            logger.info("drained")
        else:
            logger.warning("drain timed out after %.0f s; stopping anyway", self.drain_timeout_s)
        self.should_exit = True
