"""Stands in for vLLM's `tests/utils.py` so vLLM's own OpenAI tests run against tuneserve.

`RemoteOpenAIServer(model, args)` starts `tuneserve serve` on the local default model under the
name the test asks for (`--served-model-name`), passing on the vLLM flags tuneserve has and
dropping the rest (each named once on stderr). Nothing here is vLLM's code.
"""

import os
import sys
import tempfile
from pathlib import Path

import openai

from tuneserve.server.process import start_server, stop_server

ROCM_ENV_OVERRIDES: dict = {}
ROCM_EXTRA_ARGS: list = []
VLLM_PATH = Path(__file__).resolve().parents[1]

# vLLM flags tuneserve serve has (with a value unless listed in FLAGS_WITHOUT_VALUE)
PASSED_ON = {"--max-model-len", "--max-num-seqs", "--enforce-eager", "--tool-call-parser", "--seed", "--max-loras", "--max-lora-rank", "--max-cpu-loras"}
FLAGS_WITHOUT_VALUE = {"--enforce-eager", "--enable-auto-tool-choice", "--enable-lora", "--enable-tokenizer-info-endpoint", "--trust-remote-code", "--enable-prefix-caching", "--no-enable-prefix-caching"}


def tuneserve_args(vllm_args: list[str]) -> list[str]:
    out, dropped, i = [], [], 0
    while i < len(vllm_args):
        flag = vllm_args[i].split("=")[0]
        has_value = "=" not in vllm_args[i] and flag not in FLAGS_WITHOUT_VALUE and i + 1 < len(vllm_args) and not vllm_args[i + 1].startswith("--")
        taken = vllm_args[i : i + 1 + has_value]
        (out if flag in PASSED_ON else dropped).extend(taken)
        i += 1 + has_value
    if dropped:
        print(f"tuneserve shim: not passed on: {' '.join(dropped)}", file=sys.stderr)
    return out


class RemoteOpenAIServer:
    DUMMY_API_KEY = "token-abc123"

    def __init__(self, model: str, vllm_serve_args: list[str], *, env_dict: dict | None = None, seed: int | None = 0, auto_port: bool = True, max_wait_seconds: float | None = None, **_):
        self.model = model
        self._tmp = tempfile.TemporaryDirectory()
        local = os.environ.get("TUNESERVE_UPSTREAM_MODEL", "smollm2-135m-instruct")
        self.server = start_server(Path(self._tmp.name), "--model", local, "--served-model-name", model, *tuneserve_args(vllm_serve_args))
        self.host, self.port = "127.0.0.1", int(self.server.base_url.rsplit(":", 1)[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        stop_server(self.server)
        self._tmp.cleanup()

    @property
    def url_root(self) -> str:
        return self.server.base_url

    def url_for(self, *parts: str) -> str:
        return self.url_root + "/" + "/".join(parts)

    def get_client(self, **kwargs):
        return openai.OpenAI(base_url=self.url_for("v1"), api_key=self.DUMMY_API_KEY, max_retries=0, **kwargs)

    def get_async_client(self, **kwargs):
        return openai.AsyncOpenAI(base_url=self.url_for("v1"), api_key=self.DUMMY_API_KEY, max_retries=0, **kwargs)
