"""`tuneserve serve`: resolve the model, start vLLM in-process, load adapters, run uvicorn."""

import asyncio
import logging
import os
import signal
from pathlib import Path

import uvicorn

from tuneserve.config import tuneserve_home
from tuneserve.engine import plan_loras
from tuneserve.models import model_fingerprint
from tuneserve.models.facts import safetensors_header, weight_files
from tuneserve.server.adapter_checks import ServedBase
from tuneserve.server.adapters import AdapterRegistry
from tuneserve.server.adapters_file import AdaptersFileWatcher
from tuneserve.server.app import create_app
from tuneserve.server.config import ServeConfig
from tuneserve.server.engine import build_engine, engine_limits, served_model_dir
from tuneserve.server.guards import load_guards
from tuneserve.server.serving import ServedModel
from tuneserve.server.snapshots import SnapshotDir
from tuneserve.server.startup import (
    StartupError,
    bind_socket,
    check_adapters_file,
    load_keys,
    prepare_adapters,
    warn_if_exposed,
)
from tuneserve.server.tools import check_tool_parser

logger = logging.getLogger("tuneserve.server")


ENGINE_WATCH_INTERVAL_S = 1.0


def serve(config: ServeConfig) -> int:
    """Serve `config.model` until SIGINT/SIGTERM (SIGTERM drains in-flight requests first).

    Everything that can be checked before the engine starts is (model, keys, port, adapters,
    memory), each failing with a one-line StartupError. Returns the exit code: 0 after a
    shutdown, 1 when the engine died (so that an orchestrator restarts the server).
    """

    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    model_dir = served_model_dir(config)
    auth = load_keys(config.api_key, config.api_keys)
    guards = load_guards(config.guard_model, [t.spec for t in auth.tenants] if auth else [])
    if config.metrics_auth and auth is None:
        raise StartupError("--metrics-auth needs keys to check: pass --api-key or --api-keys")
    base = served_base(config.model_names, model_dir) if config.is_lora_enabled else None
    snapshots = SnapshotDir(tuneserve_home() / "adapter-snapshots") if base is not None else None
    try:
        prepared = prepare_adapters(config.adapters, base, config.max_lora_rank, snapshots) if base is not None else {}
        check_adapters_file(config.adapters_file)
        sock = bind_socket(config.host, config.port)
        warn_if_exposed(config.host, auth is not None)
        try:
            try:  # last of the early checks: vLLM's parser registry takes ~3 s to import
                check_tool_parser(config.tool_call_parser)
            except ValueError as e:
                raise StartupError(f"--tool-call-parser: {e}") from None
            return asyncio.run(_serve(config, model_dir, auth, base, sock, guards, snapshots, prepared))
        finally:
            sock.close()
    finally:
        if snapshots is not None:
            snapshots.remove()


def served_base(names: list[str], model_dir: Path):

    shapes = {}
    for path in weight_files(model_dir):
        _, header = safetensors_header(path)
        shapes |= {k.removesuffix(".weight"): t["shape"] for k, t in header.items() if k.endswith(".weight")}
    return ServedBase(names, model_dir, model_fingerprint(model_dir), shapes)


async def _serve(config: ServeConfig, model_dir: Path, auth, base, sock, guards, snapshots, prepared) -> int:
    from transformers import AutoTokenizer


    lora_plan = None if base is None else plan_loras(base.weight_shapes, config.max_lora_rank, config.max_loras, config.max_cpu_loras)
    engine = build_engine(config, model_dir, lora_plan)
    watcher = None
    try:
        adapters = None
        if base is not None:
            adapters = AdapterRegistry(engine, base, config.max_lora_rank, snapshots, roots=config.adapter_root_dirs,
                                       max_disk_bytes=int(config.adapter_disk_gib * (1 << 30)), url_prefixes=config.adapter_url_prefixes,
                                       max_pinned=lora_plan.max_loras - 1)
            for name, info in prepared.items():
                await adapters.load(name, info.source_path, source="cli", info=info)
            if config.adapters_file:
                watcher = AdaptersFileWatcher(Path(config.adapters_file).expanduser().resolve(), adapters, config.adapters_file_poll_s)
                await watcher.check()  # broken entries are reported and skipped: the rest serves
        max_model_len, max_num_seqs = engine_limits(engine)
        if auth is not None:
            auth.set_default_parallel(config.max_parallel_requests_per_key or max(1, max_num_seqs // 2))
        model = ServedModel(
            names=config.model_names, path=str(model_dir),
            max_model_len=max_model_len, max_tokens_cap=config.max_tokens_cap,
            chat_template=Path(config.chat_template).expanduser().read_text() if config.chat_template else None,
            tool_call_parser=config.tool_call_parser,
        )
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        app = create_app(config, engine, tokenizer, model, adapters, auth)
        app.state.adapters_file = watcher
        if guards is not None:
            guards.decode = tokenizer.decode
        app.state.guards = guards
        # The drain already waited for requests; past it, uvicorn must not wait on open sockets.
        uvicorn_config = uvicorn.Config(app, log_level=config.log_level, timeout_graceful_shutdown=5)
        server = DrainingServer(uvicorn_config, app.state.admission, config.drain_timeout_s)
        host, port = sock.getsockname()[:2]
        logger.info("serving %s at http://%s:%d/v1", ", ".join(model.names), host, port)
        tasks = [asyncio.create_task(_watch_engine(engine, server, snapshots.remove if snapshots else lambda: None))]
        if watcher is not None:
            tasks.append(asyncio.create_task(watcher.run()))
        await server.serve(sockets=[sock])
        for task in tasks:
            task.cancel()
        return 0
    finally:
        engine.shutdown()


async def _watch_engine(engine, server: "DrainingServer", cleanup) -> None:
    """An engine that died takes the server down with exit code 1: a supervisor restarts it.
    Until the process is gone, /health and every request answer 503 (never a refused connection):
    the engine's remains are shut down while the server still answers, then the process exits
    at once, listening socket and all (nothing left to drain: every request needs the engine)."""
    while not engine.errored:
        await asyncio.sleep(ENGINE_WATCH_INTERVAL_S)
    logger.error("the vLLM engine has died; stopping the server (exit code 1) so that it can be restarted")
    server.admission.is_draining = True
    await asyncio.to_thread(engine.shutdown)
    cleanup()
    logging.shutdown()
    os._exit(1)


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
