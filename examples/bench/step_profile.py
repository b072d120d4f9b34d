"""Where one decode step goes: py-spy samples of a running `tuneserve serve` under one stream.

    tuneserve serve --port 8011 &
    python examples/bench/step_profile.py --url http://127.0.0.1:8011 --pid $! --seconds 25

Drives one stream of 64-token completions, records the API process and vLLM's EngineCore (which
runs the model on CPU with one rank; its Worker too with `--distributed-executor-backend mp`)
with py-spy (`pip install py-spy`), and prints each process's share of samples by part of the
step. py-spy itself takes CPU on a small machine: read shares, not the tok/s it prints.
"""

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import psutil

RATE = 200  # samples a second
PY_SPY = str(Path(sys.executable).with_name("py-spy"))  # the wheel installs a binary beside python, no module

# (label, substring of a frame): the first label whose substring is on a sample's stack counts it
PARTS = [
    ("waiting (sched_yield / epoll)", ("sched_yield", "EpollSelector.select", "SpinCondition.wait")),
    ("llama.cpp (--engine llamacpp: a request's thread in handle_completions)", ("handle_completions",)),
    ("llama.cpp chunks into the event loop", ("on_chunk", "_choice", "delta_of")),
    ("SSE chunks (OpenAI JSON per token)", ("sse", "model_dump", "serialize")),
    ("linear layers (oneDNN GEMM)", ("onednn_mm",)),
    ("attention kernel", ("cpu_attention_with_kv_cache",)),
    ("KV-cache write", ("cpu_attn_reshape_and_cache",)),
    ("rotary embedding", ("rotary_embedding",)),
    ("RMSNorm", ("rms_norm",)),
    ("input preparation", ("_prepare_inputs", "_compute_slot_mapping")),
    ("sampler", ("Sampler.", "sample_tokens")),
    ("detokenizer", ("detokenizer",)),
    ("rest of the model forward (Python, activations)", ("models/llama.py", "model_executor")),
]


def stream(url: str, model: str, seconds: float, result: dict) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    start, tokens = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        reply = client.completions.create(model=model, prompt="Tell me a long story about the sea and ships.", max_tokens=64,
                                          temperature=0, extra_body={"ignore_eos": True})
        tokens += reply.usage.completion_tokens
    result["tok/s"] = tokens / (time.monotonic() - start)


def shares(raw: Path) -> tuple[int, collections.Counter]:
    total, parts = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        total += int(count)
        label = next((name for name, keys in PARTS if any(k in stack for k in keys)), "other")
        parts[label] += int(count)
    return total, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, required=True, help="the `tuneserve serve` process")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seconds", type=float, default=25)
    args = parser.parse_args()
    server = psutil.Process(args.pid)
    processes = {"API": server} | {p.name(): p for p in server.children(recursive=True) if p.name().startswith("VLLM::")}
    stream(args.url, args.model, 3, {})  # warm-up
    result: dict = {}
    load = threading.Thread(target=stream, args=(args.url, args.model, args.seconds + 4, result))
    load.start()
    time.sleep(2)
    with tempfile.TemporaryDirectory() as tmp:
        spies = {name: subprocess.Popen([PY_SPY, "record", "--pid", str(p.pid), "--duration", str(int(args.seconds)),
                                         "--rate", str(RATE), "--format", "raw", "--nonblocking", "--output", f"{tmp}/{p.pid}.txt"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, p in processes.items()}
        for spy in spies.values():
            spy.wait()
        load.join()
        tok_s = result.get("tok/s", 0)
        print(f"one stream under the profiler: {tok_s:.1f} tok/s")
        for name, p in processes.items():
            total, parts = shares(Path(f"{tmp}/{p.pid}.txt"))
            waiting = sum(n for label, n in parts.items() if label.startswith(("waiting", "llama.cpp (")))
            busy = (total - waiting) / (args.seconds * RATE)  # Python at work, not waiting in epoll or in llama.cpp
            per_token = f", {busy * 1e3 / tok_s:.1f} ms of CPU a token" if tok_s else ""
            print(f"\n{name} (pid {p.pid}), {total} samples: Python threads busy {100 * busy:.0f}% of one core{per_token}")
            for label, count in parts.most_common():
                print(f"  {100 * count / max(total, 1):5.1f}%  {label}")


if __name__ == "__main__":
    main()
