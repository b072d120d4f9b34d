"""Why `tuneserve serve` picks its CPU defaults: one run, side by side, printed as ratios.

Starts the real server three times on the default model and measures decode throughput
(32 parallel chats and a single stream) plus whether the Paris answer is right:
  1. tuneserve's defaults: every usable core for the engine, eager mode
  2. --cpu-threads 1: one engine thread (what vLLM does when OMP_NUM_THREADS is unset)
  3. --compile: torch.compile instead of eager

Run: .venv/bin/python benchmarks/cpu_defaults.py   (about 6 minutes on 2 cores)
"""

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import start_server, stop_server  # noqa: E402  (the suite's engine settings)
from tests.helpers import MODEL  # noqa: E402

SETTINGS = {"defaults (all cores, eager)": [], "--cpu-threads 1": ["--cpu-threads", "1"], "--compile": ["--compile"]}
NUM_PARALLEL = 32
NUM_TOKENS = 64


async def one_chat(client: openai.AsyncOpenAI, i: int) -> int:
    response = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Write a story about robot {i}."}],
        max_tokens=NUM_TOKENS, temperature=0, extra_body={"ignore_eos": True},
    )
    return response.usage.completion_tokens


async def measure(base_url: str) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=600)
    answer = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20, temperature=0
    )
    await one_chat(client, 0)  # warm-up
    start = time.perf_counter()
    single = await one_chat(client, 1) / (time.perf_counter() - start)
    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one_chat(client, i) for i in range(NUM_PARALLEL))))
    parallel = tokens / (time.perf_counter() - start)
    return {"single": single, "parallel": parallel, "paris": "Paris" in answer.choices[0].message.content}


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in SETTINGS.items():
            server = start_server(Path(tmp), *args)
            try:
                results[name] = asyncio.run(measure(server.base_url))
            finally:
                stop_server(server)
            print(f"{name}: {results[name]}", flush=True)
    base = results["defaults (all cores, eager)"]
    print(f"\n| setting | single-stream tok/s | {NUM_PARALLEL} chats tok/s | vs defaults (single / {NUM_PARALLEL}) | answers Paris |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['single']:.1f} | {r['parallel']:.1f} | "
              f"{r['single'] / base['single']:.2f}x / {r['parallel'] / base['parallel']:.2f}x | {r['paris']} |")


if __name__ == "__main__":
    main()
