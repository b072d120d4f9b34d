"""Throughput of the optimize stage's outputs, side by side in one run, printed as ratios.

Servers on: the base model; the committed dates adapter merged into it; the base serving that
adapter unmerged (LoRA); GPTQ W4A16; SmoothQuant+GPTQ W8A8. Each gets the same 32 parallel
chats (64 tokens each) after a warm-up.

Run: .venv/bin/python benchmarks/optimize_throughput.py   (about 12 minutes on 2 cores)
"""

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import start_server  # noqa: E402
from tests.helpers import ADAPTERS  # noqa: E402
from tuneserve.bench.server_process import stop_server  # noqa: E402
from tuneserve.optimize import run_merge, run_quantize  # noqa: E402

NUM_PARALLEL = 32
NUM_TOKENS = 64


async def throughput(base_url: str, model: str) -> tuple[float, str]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=600, max_retries=0)

    async def chat(prompt: str, max_tokens: int = NUM_TOKENS):
        return await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            extra_body={"ignore_eos": True},
        )

    paris = (await chat("What is the capital of France?", 12)).choices[0].message.content
    start = time.perf_counter()
    replies = await asyncio.gather(*(chat(f"Write a story about robot {i}.") for i in range(NUM_PARALLEL)))
    return sum(r.usage.completion_tokens for r in replies) / (time.perf_counter() - start), paris


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        merged = run_merge(str(ADAPTERS["dates"]), str(tmp / "merged"))
        w4a16 = run_quantize(None, str(tmp / "w4a16"), scheme="w4a16", samples=64, eval_samples=0)
        w8a8 = run_quantize(None, str(tmp / "w8a8"), scheme="w8a8", samples=64, eval_samples=0)
        settings = {
            "base (bf16)": ([], "smollm2-135m-instruct"),
            "merged adapter": (["--model", str(merged)], str(merged)),
            "unmerged adapter (LoRA)": (["--adapter", f"dates={ADAPTERS['dates']}"], "dates"),
            "GPTQ W4A16": (["--model", str(w4a16)], str(w4a16)),
            "SmoothQuant+GPTQ W8A8": (["--model", str(w8a8)], str(w8a8)),
        }
        rows = {}
        for name, (args, model) in settings.items():
            server = start_server(tmp, *args)
            try:
                rows[name] = asyncio.run(throughput(server.base_url, model))
            finally:
                stop_server(server)
            print(name, rows[name], flush=True)
    base = rows["base (bf16)"][0]
    print(f"\n| model | {NUM_PARALLEL} chats, output tok/s | vs base | answer to 'capital of France?' |\n|---|---|---|---|")
    for name, (tps, paris) in rows.items():
        print(f"| {name} | {tps:.1f} | {tps / base:.2f}x | {paris!r} |")


if __name__ == "__main__":
    main()
