"""`tuneserve serve`: resolve the model, start vLLM in-process, run uvicorn."""

import asyncio
import logging
from pathlib import Path

from tuneserve.server.config import ServeConfig

logger = logging.getLogger("tuneserve.server")


def serve(config: ServeConfig) -> None:
    """Serve `config.model` until SIGINT/SIGTERM."""
    from tuneserve.models import resolve_model

    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    model_dir = resolve_model(config.model)
    asyncio.run(_serve(config, model_dir))


async def _serve(config: ServeConfig, model_dir: Path) -> None:
    import uvicorn
    from transformers import AutoTokenizer

    from tuneserve.server.app import create_app
    from tuneserve.server.engine import build_engine
    from tuneserve.server.serving import ServedModel

    engine = build_engine(config, model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = ServedModel(
            names=config.model_names, path=str(model_dir), max_model_len=engine.model_config.max_model_len
        )
        app = create_app(config, engine, tokenizer, model)
        server = uvicorn.Server(
            uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level)
        )
        logger.info("serving %s at http://%s:%d/v1", ", ".join(model.names), config.host, config.port)
        await server.serve()
    finally:
        engine.shutdown()
