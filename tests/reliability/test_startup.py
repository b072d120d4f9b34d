"""The README's path is the tested path: `make serve` with no flags, on a machine in normal use;
and every start-up failure is one line that names the cause and the fix."""

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest

from tests.helpers import ADAPTERS
from tuneserve.config import tuneserve_home
from tuneserve.server.process import free_port, launch, stop_server

DATE_PROMPT = "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only."

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
BUSY_FRACTION = 0.85  # hold memory until less than this share of the memory node is available


def node_memory() -> tuple[int, int]:
    """(available, total) bytes of the memory node vLLM's CPU worker checks."""
    from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

    info = get_memory_node_info(get_allowed_cpu_list()[0].numa_node)
    return info.available_memory, info.total_memory


def hold_memory(num_bytes: int) -> subprocess.Popen:
    """Another process that really holds `num_bytes` (every page touched) until killed."""
    code = (
        "import sys, time\n"
        f"b = bytearray({num_bytes})\n"
        "b[::4096] = b'\\x01' * len(range(0, len(b), 4096))\n"
        "print('held', flush=True)\n"
        "time.sleep(3600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_make_serve_answers_with_no_flags_while_memory_is_busy(tmp_path, record):
    available, total = node_memory()
    ballast = hold_memory(max(0, int(available - BUSY_FRACTION * total))) if available > BUSY_FRACTION * total else None
    try:
        available_at_start, _ = node_memory()
        assert available_at_start / total < 0.9  # vLLM's own check (0.92 of the node) would refuse to start
        port = free_port()
        server = launch(["make", "-C", str(ROOT), "serve", f"PORT={port}"], port, tmp_path)
        try:
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
            reply = client.chat.completions.create(
                model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
            )
            # An adapter dropped into the default adapter root is served by naming it: no flag, no admin call.
            name = f"dates-{uuid.uuid4().hex[:8]}"
            shutil.copytree(ADAPTERS["dates"], tuneserve_home() / "adapters" / name)
            try:
                dated = client.chat.completions.create(model=name, messages=[{"role": "user", "content": DATE_PROMPT}],
                                                       temperature=0, max_tokens=16)
            finally:
                shutil.rmtree(tuneserve_home() / "adapters" / name)
            log = server.log_path.read_text()
        finally:
            stop_server(server)
    finally:
        if ballast is not None:
            ballast.kill()
            ballast.wait()
    assert reply.choices[0].message.content.strip()
    assert dated.choices[0].message.content.strip() == "2001-03-03"
    assert "LoRA: 16 adapters per step" in log  # on by default, sized and logged at start
    kv_line = next(line for line in log.splitlines() if "KV cache" in line and "tokens" in line)
    assert "default:" in kv_line
    record("start-up: `make serve` as the README gives it, memory node busy", 1, "answered the openai client",
           f"{available_at_start / total:.0%} of the node available at start; {kv_line.split('server: ')[-1].split(';')[0]}")


LEAKY_KEY = "sk-do-not-print-me-0001"


def failing_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    bad_keys = tmp_path / "bad-keys.yaml"
    bad_keys.write_text(f"keys:\n  - name: a\n    key: {LEAKY_KEY}\n    scopes: [inference, superuser]\n")
    broken_yaml = tmp_path / "broken-keys.yaml"
    broken_yaml.write_text(f'keys:\n  - name: a\n    key: "{LEAKY_KEY}\n')
    twins = tmp_path / "twin-keys.yaml"
    twins.write_text(f"keys:\n  - name: a\n    key: {LEAKY_KEY}\n  - name: a\n    key: sk-another-key-0001\n")
    return {
        "unknown model": (["--model", "/no/such/model"], "unknown model"),
        "invalid adapter": (["--adapter", f"x={tmp_path}/no-adapter"], "--adapter x="),
        "bad keys file": (["--api-keys", str(bad_keys)], "keys.0.scopes"),
        "keys file not YAML": (["--api-keys", str(broken_yaml)], "not valid YAML at line"),
        "missing keys file": (["--api-keys", str(tmp_path / "nope.yaml")], "No such file"),
        "two tenants of one name": (["--api-keys", str(twins)], "keys[0] and keys[1] are both named 'a'"),
        "not enough memory": (["--kv-cache-gib", "100000"], "not enough memory"),
        "KV cache below one sequence": (["--kv-cache-gib", "0.001"], "less than one 8192-token sequence"),
        "GPU option on CPU": (["--gpu-memory-utilization", "0.5"], "--gpu-memory-utilization applies to GPUs"),
        "metrics auth without keys": (["--metrics-auth"], "--metrics-auth needs keys"),
        "bad flag value": (["--max-model-len", "3"], "--max-model-len: Input should be greater than or equal to 16"),
    }


CASES = ["port in use", "unknown model", "invalid adapter", "bad keys file", "keys file not YAML", "missing keys file", "two tenants of one name",
         "not enough memory", "KV cache below one sequence", "GPU option on CPU", "metrics auth without keys", "bad flag value"]


@pytest.mark.parametrize("case", CASES)
def test_startup_failure_is_one_line_naming_the_fix(tmp_path, case, record):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if case == "port in use":
            args, expected = ["--port", str(busy.getsockname()[1])], "already in use; pass another --port"
        else:
            args, expected = failing_cases(tmp_path)[case]
            args = ["--port", str(free_port()), *args]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "tuneserve", "serve", *args], capture_output=True, text=True, timeout=120)
        elapsed_s = time.monotonic() - started
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2  # what the README promises: exit code 2 ...
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and expected in lines[-1], result.stderr[-2000:]  # ... and one line, the last
    assert "Traceback" not in result.stderr + result.stdout
    assert LEAKY_KEY not in result.stderr + result.stdout
    assert elapsed_s < 60
    record("start-up failure: " + case, 1, "exit 2, one line", f"{elapsed_s:.1f} s; \"{lines[-1][7:80]}...\"")
