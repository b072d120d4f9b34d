"""`tuneserve serve --replicas N`: N servers on this machine behind vLLM's router (`vllm-router`).

Each replica is a whole `tuneserve serve` (API, engine, keys, adapters file, guards) on a loopback
port, with its own group of cores (CPU affinity) and its share of the memory (the KV cache planned
as for N data-parallel ranks). The router listens on the public host and port, routes each request
by the chosen policy (`cache_aware` by default: a request goes where its prompt's prefix was
served before, so the replica's prefix cache is warm), retries a request a replica refused or
dropped, and checks the replicas' /health. This supervisor restarts a replica that dies (on the
same port, so the router's health checks bring it back), and on SIGTERM drains every replica
(each answers 503 on /health and to new requests, so the router sends them elsewhere) before it
stops the router.

Why a flag of `serve` rather than a command of its own: it is the same server, scaled out; every
setting means what it means for one server (SGLang's router launcher and vLLM's
--data-parallel-size work the same way). Past one machine, the router runs as its own Deployment
and finds the replicas by label (deploy/helm).
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tuneserve.config import tuneserve_home
from tuneserve.engine import Parallelism, core_groups, plan_kv_cache
from tuneserve.errors import StartupError
from tuneserve.models import resolve_model
from tuneserve.server.config import VLLM_ONLY, ServeConfig
from tuneserve.server.process import ServerProcess, free_port, spawn, stop_server, terminate_with_parent, wait_ready

logger = logging.getLogger("tuneserve.replicas")

HEALTH_INTERVAL_S = 2  # the router's health checks: a dead or draining replica leaves rotation within ~2 of them
POLL_S = 0.5
ROUTER_ONLY = {"replicas", "host", "port", "router_policy", "router_retries", "router_args"}


VLLM_DEFAULT_MAX_NUM_SEQS = 128  # vLLM's CPU default
DEFAULT_KV_BLOCK_SIZE = 16  # vLLM's default KV-cache block (the CPU backend takes 128)


def replica_ports(port: int, n: int) -> list[int]:
    """Where the replicas listen on 127.0.0.1: the N ports after the router's (none for one server)."""
    return [port + 1 + i for i in range(n)] if n > 1 else []


def router_binary() -> str:
    """vllm-router's launcher, installed beside this Python."""
    found = shutil.which("vllm-router", path=str(Path(sys.executable).parent)) or shutil.which("vllm-router")
    if found is None:
        raise StartupError("--replicas needs vLLM's router: pip install vllm-router")
    return found


def replica_values(config: ServeConfig) -> tuple[dict, list[list[int]]]:
    """The YAML every replica starts from, and each replica's cores: split as for N data-parallel
    ranks (each replica's KV cache is what vLLM would give one of N ranks; cores in equal groups)."""
    n = config.replicas
    try:
        groups = core_groups(sorted(os.sched_getaffinity(0))[:config.cpu_threads], n)
    except ValueError as e:
        raise StartupError(f"--replicas {n}: {e}") from None
    if config.engine == "llamacpp":  # its replicas take the cores of their group and nothing vLLM-only
        return config.model_dump(exclude=ROUTER_ONLY | set(VLLM_ONLY)) | {"cpu_threads": None}, groups
    values = config.model_dump(exclude=ROUTER_ONLY | {"gguf_type"})
    if config.kv_cache_gib is None:
        plan = plan_kv_cache(resolve_model(config.model), config.dtype, config.max_model_len, None, parallelism=Parallelism(data=n))
        values["kv_cache_gib"] = plan.kv_cache_bytes / (1 << 30)
    values["cpu_threads"] = None  # every core of its group
    return values, groups


def router_command(config: ServeConfig, urls: list[str], metrics_port: int, kv_events: list[str] | None = None,
                   block_size: int = DEFAULT_KV_BLOCK_SIZE) -> list[str]:
    # cache_aware sends a request to the replica holding its longest prefix until the replicas'
    # loads differ by more than --balance-abs-threshold (64 by default: more than a CPU replica
    # batches, so one replica took everything). A quarter of a replica's batch keeps both busy.
    balance = max(1, (config.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS) // 4)
    return [
        router_binary(), "--worker-urls", *urls, "--policy", config.router_policy,
        "--balance-abs-threshold", str(balance),
        "--host", config.host, "--port", str(config.port),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
        "--retry-max-retries", str(config.router_retries),
        "--health-check-interval-secs", str(HEALTH_INTERVAL_S), "--health-failure-threshold", "2",
        "--health-success-threshold", "1", "--cb-timeout-duration-secs", "10",
        "--worker-startup-timeout-secs", "900", "--log-level", config.log_level,
        *kv_event_flags(urls, kv_events or [], config.model_names[0], block_size), *config.router_args,
    ]


def kv_event_flags(urls: list[str], endpoints: list[str], model: str, block_size: int) -> list[str]:
    """kv_aware: where each replica's engine publishes its KV-cache events, the engine's block size
    (the router hashes prompts in blocks of it) and the model they are of (the served name)."""
    if not endpoints:
        return []
    flags = [f for url, endpoint in zip(urls, endpoints, strict=True) for f in ("--kv-event-source", f"{url}={endpoint}")]
    return [*flags, "--kv-event-block-size", str(block_size), "--kv-event-model", model]


def engine_block_size(url: str) -> int:
    """The KV-cache block size a running replica's engine chose (vLLM's cache_config_info metric)."""
    import re

    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        text = ""
    found = re.search(r'^vllm:cache_config_info\{[^}]*block_size="(\d+)"', text, re.MULTILINE)
    if found is None:
        logger.warning("kv_aware: no block size in %s/metrics; assuming vLLM's default %d", url, DEFAULT_KV_BLOCK_SIZE)
        return DEFAULT_KV_BLOCK_SIZE
    return int(found.group(1))


def check_router_flags(command: list[str]) -> None:
    """vllm-router's own parser on the router's flags (--router-arg included): a typo fails here,
    with the router's message, before any replica starts."""
    from vllm_router.launch_router import parse_router_args

    try:
        parse_router_args(command[1:])
    except SystemExit:
        raise StartupError("--router-arg: vllm-router refused its flags (its message is above)") from None


class Supervisor:
    """Starts the replicas, then the router; restarts a replica that dies; drains all on SIGTERM."""

    def __init__(self, config: ServeConfig, work: Path, log_dir: Path):
        self.config = config
        values, self.groups = replica_values(config)
        self.config_path = work / "replica.yaml"
        self.config_path.write_text(yaml.safe_dump(values))
        self.log_dir = log_dir
        self.ports = replica_ports(config.port, len(self.groups)) if config.port else [free_port() for _ in self.groups]
        self.replicas: list[ServerProcess | None] = [None] * len(self.groups)
        # kv_aware: each engine publishes its KV-cache events here (the same endpoint after a restart)
        # (on loopback, which the engine binds: plugin fix 7)
        self.kv_events = [f"tcp://127.0.0.1:{free_port()}" for _ in self.groups] if config.router_policy == "kv_aware" else []
        self.restarts = [0] * len(self.groups)
        self.router: subprocess.Popen | None = None
        self.stopping = False

    def start_replica(self, i: int) -> None:
        cmd = [sys.executable, "-m", "tuneserve", "serve", "--config", str(self.config_path),
               "--host", "127.0.0.1", "--port", str(self.ports[i])]
        if self.kv_events:
            cmd += ["--kv-events-endpoint", self.kv_events[i]]
        self.replicas[i] = spawn(cmd, self.ports[i], self.log_dir, cores=self.groups[i], log_name=f"replica-{i}.log",
                                 with_parent=True)  # a killed supervisor leaves no replica behind
        logger.info("replica %d: pid %d on 127.0.0.1:%d, cores %s, log %s", i, self.replicas[i].process.pid,
                    self.ports[i], ",".join(map(str, self.groups[i])), self.replicas[i].log_path)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for i in range(len(self.groups)):
            self.start_replica(i)
        for i, replica in enumerate(self.replicas):
            try:
                wait_ready(replica)
            except RuntimeError as e:
                last = [line for line in str(e).splitlines() if line.strip()][-1]  # a user error is the log's last line
                raise StartupError(f"replica {i} did not start: {last} (log: {replica.log_path})") from None
        metrics_port = free_port()
        urls = [r.base_url for r in self.replicas]
        block_size = engine_block_size(urls[0]) if self.kv_events else DEFAULT_KV_BLOCK_SIZE
        self.router = subprocess.Popen(router_command(self.config, urls, metrics_port, self.kv_events, block_size),
                                       start_new_session=True, preexec_fn=terminate_with_parent)
        logger.info("vllm-router (%s) on http://%s:%d in front of %d replicas; its metrics on 127.0.0.1:%d",
                    self.config.router_policy, self.config.host, self.config.port, len(self.replicas), metrics_port)
        while not self.stopping:
            if self.router.poll() is not None:
                logger.error("the router exited with %d; stopping the replicas", self.router.returncode)
                return 1
            for i, replica in enumerate(self.replicas):
                if replica.process.poll() is not None and not self.stopping:
                    self.restarts[i] += 1
                    logger.warning("replica %d exited with %d; restarting it (restart %d)", i, replica.process.returncode, self.restarts[i])
                    stop_server(replica)  # its engine processes too
                    self.start_replica(i)
            time.sleep(POLL_S)
        return 0

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def stop(self) -> None:
        """Drain the replicas (SIGTERM: each answers 503 to new requests and finishes what it
        holds, so the router sends new work elsewhere), then stop the router."""
        self.stopping = True
        for replica in self.replicas:
            if replica is not None and replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout_s + 30
        for replica in self.replicas:
            if replica is None:
                continue
            try:  # one SIGTERM only: a second one would cut the drain short
                replica.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            stop_server(replica, timeout_s=0.1)  # what is left, engine processes included
        if self.router is not None and self.router.poll() is None:
            self.router.terminate()
            try:
                self.router.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.router.kill()
                self.router.wait()


def serve_replicas(config: ServeConfig) -> int:
    """Serve `config` as `config.replicas` replicas behind the router until SIGINT/SIGTERM."""
    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    router_binary()  # fail before anything starts
    kv_events = ["tcp://127.0.0.1:2"] if config.router_policy == "kv_aware" else None
    check_router_flags(router_command(config, ["http://127.0.0.1:1"], 1, kv_events))
    log_dir = tuneserve_home() / "logs" / f"replicas-{config.port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tuneserve-replicas-") as work:
        supervisor = Supervisor(config, Path(work), log_dir)
        try:
            return supervisor.run()
        finally:
            supervisor.stop()
