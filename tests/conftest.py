"""Shared fixtures: one real server per session (real vLLM engine, real model, real HTTP)."""

import shutil
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.helpers import ADAPTERS, ADMIN_KEY, GUARD_MODEL, KEYS_YAML, MODEL
from tuneserve.server.process import ServerProcess, free_port, stop_server
from tuneserve.server.process import start_server as start_server_process

# No memory flags: every test server sizes its KV cache the way `tuneserve serve` does for users.
SERVER_ARGS = ["--max-model-len", "2048", "--max-num-seqs", "32"]


def start_server(tmp_dir: Path, *extra_args: str, env: dict | None = None) -> ServerProcess:
    """The default model with the test suite's engine settings, plus `extra_args`.

    vLLM logs as it does for a user: importing TRL (the finetune tests) sets VLLM_LOGGING_LEVEL=ERROR
    in this process's environment, which every later server would inherit."""
    env = {"VLLM_LOGGING_LEVEL": "INFO"} | (env or {})
    return start_server_process(tmp_dir, "--model", MODEL, *SERVER_ARGS, *extra_args, env=env)


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory) -> Path:
    """The server's --adapter-root, holding copies of the committed example adapters."""
    root = tmp_path_factory.mktemp("adapter-root")
    for name, path in ADAPTERS.items():
        shutil.copytree(path, root / name)
    return root


@pytest.fixture(scope="session")
def adapters_file(tmp_path_factory) -> Path:
    """The session server's --adapters-file: empty; tests/server/test_adapters_file.py edits it and empties it again."""
    path = tmp_path_factory.mktemp("adapters-file") / "adapters.yaml"
    path.write_text("adapters: {}\n")
    return path


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> Path:
    """The session server's Hugging Face Hub cache (HF_HUB_CACHE; offline): empty; tests lay out repositories in it."""
    return tmp_path_factory.mktemp("hub-cache")


@dataclass
class AdapterSite:
    """A real HTTP server holding adapter archives: `directory` is served at `prefix` (the session
    server's --adapter-url-prefix); `/moved/NAME` redirects to `/elsewhere/NAME`, outside it;
    `dead_prefix` is allowed too, with nothing listening."""

    directory: Path
    prefix: str
    dead_prefix: str


@pytest.fixture(scope="session")
def adapter_site(tmp_path_factory) -> AdapterSite:
    directory = tmp_path_factory.mktemp("adapter-site")

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def do_GET(self):
            if self.path.startswith("/adapters/moved/"):
                self.send_response(302)
                self.send_header("Location", "/elsewhere/" + self.path.rsplit("/", 1)[1])
                self.end_headers()
                return
            self.path = self.path.removeprefix("/adapters")
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield AdapterSite(directory, f"http://127.0.0.1:{httpd.server_address[1]}/adapters/", f"http://127.0.0.1:{free_port()}/adapters/")
    httpd.shutdown()


@pytest.fixture(scope="session")
def server(tmp_path_factory, adapter_root, adapters_file, hub_cache, adapter_site) -> ServerProcess:
    """The one shared real server: base model, two preloaded adapters, tenants with keys (some
    guarded), an adapters file, the playground with its arena database."""
    tmp = tmp_path_factory.mktemp("server")
    (tmp / "keys.yaml").write_text(KEYS_YAML)
    adapters = [arg for name in ADAPTERS for arg in ("--adapter", f"{name}={adapter_root / name}")]
    running = start_server(
        tmp, *adapters, "--adapter-root", str(adapter_root), "--api-keys", str(tmp / "keys.yaml"),
        "--adapters-file", str(adapters_file), "--adapters-file-poll-s", "0.5",
        "--guard-model", str(GUARD_MODEL), "--playground", "--arena-db", str(tmp / "arena.sqlite"),
        "--adapter-url-prefix", adapter_site.prefix, "--adapter-url-prefix", adapter_site.dead_prefix,
        env={"HF_HUB_CACHE": str(hub_cache)},
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)


@pytest.fixture()
def http(server):
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.base_url, timeout=300, headers=headers) as client:
        yield client


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from tuneserve.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(MODEL))
