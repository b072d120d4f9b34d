"""`tuneserve serve` as a child process: started, waited for, stopped. Used by the replica
supervisor (replicas.py), benchmarks and tests."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log_tail(self, num_lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])


def start_server(log_dir: Path, *args: str, env: dict | None = None) -> ServerProcess:
    """Start `tuneserve serve ARGS` on a free port; return once /ready answers 200."""
    port = free_port()
    return launch([sys.executable, "-m", "tuneserve", "serve", "--port", str(port), *args], port, log_dir, env)


def launch(cmd: list[str], port: int, log_dir: Path, env: dict | None = None, ready_path: str = "/ready") -> ServerProcess:
    """Run `cmd`, a command that serves on 127.0.0.1:`port` (e.g. `make serve PORT=...`), until
    `ready_path` answers 200 (`/health` for `vllm serve`)."""
    server = spawn(cmd, port, log_dir, env)
    try:
        wait_ready(server, ready_path)
    except RuntimeError:
        stop_server(server)
        raise
    return server


def spawn(cmd: list[str], port: int, log_dir: Path, env: dict | None = None, cores: list[int] | None = None,
          log_name: str | None = None, with_parent: bool = False) -> ServerProcess:
    """Start `cmd` (its output appended to a log file), on `cores` only if given; do not wait.
    `with_parent`: the child gets SIGTERM when this process dies, however it dies."""
    log_path = Path(log_dir) / (log_name or f"server-{port}.log")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"} | (env or {})

    def prepare():
        if cores:
            os.sched_setaffinity(0, cores)
        if with_parent:
            terminate_with_parent()

    with open(log_path, "ab") as log:
        # Its own process group, so that a forced stop also takes vLLM's engine processes.
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   preexec_fn=prepare if cores or with_parent else None)
    return ServerProcess(process, f"http://127.0.0.1:{port}", log_path)


def terminate_with_parent() -> None:
    """In a child before exec: SIGTERM when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_ready(server: ServerProcess, ready_path: str = "/ready", timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Until `ready_path` answers 200; RuntimeError with the log's tail if the server exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}{ready_path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{server.log_tail()}")


def stop_server(server: ServerProcess, timeout_s: float = 90) -> int:
    """SIGTERM (which drains), then SIGKILL to the whole group if it does not exit in time.

    Returns the server's exit code. Engine processes left behind are killed either way.
    """
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    return server.process.returncode
