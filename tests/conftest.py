"""Shared fixtures: one real server per session (real vLLM engine, real model, real HTTP)."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import MODEL

SERVER_ARGS = ["--max-model-len", "2048", "--kv-cache-gib", "1", "--max-num-seqs", "32"]
STARTUP_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log_tail(self, num_lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])


def start_server(tmp_dir: Path, *extra_args: str) -> RunningServer:
    """Start `tuneserve serve` in a subprocess and wait until /ready answers 200."""
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tuneserve", "serve", "--model", MODEL, "--port", str(port), *SERVER_ARGS, *extra_args]
    process = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env)
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(server)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{server.log_tail()}")


def stop_server(server: RunningServer, timeout_s: float = 60) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> RunningServer:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        yield client


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from tuneserve.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(MODEL))
