"""Throughput of the optimize stage's outputs, side by side in one run, printed as ratios.

Servers on: the base model; the committed dates adapter merged into it; the base serving that
adapter unmerged (LoRA); that merged model quantized with GPTQ W4A16 and with SmoothQuant+GPTQ
W8A8. Each gets the same 32 parallel chats (64 tokens each) after a warm-up. Quantizing the
merged model (not the base) makes the quality report say something: the base gets the demo
tasks wrong anyway, the merged model gets the dates task right, and quantization may undo that.

Run: .venv/bin/python benchmarks/optimize_throughput.py   (about 25 minutes on 2 cores)
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
from tuneserve.artifacts import read_manifest  # noqa: E402
from tuneserve.bench.server_process import stop_server  # noqa: E402
from tuneserve.optimize import run_merge, run_quantize  # noqa: E402

NUM_PARALLEL = 32
NUM_TOKENS = 64
# general knowledge, and the task the dates adapter was trained on (a held-out style prompt)
PROBES = ["What is the capital of France?", "Rewrite the date 14 July 1999 in ISO format (YYYY-MM-DD). Answer with the date only."]


async def throughput(base_url: str, model: str) -> tuple[float, list[str]]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=600, max_retries=0)

    async def chat(prompt: str, max_tokens: int = NUM_TOKENS, ignore_eos: bool = True):
        return await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            extra_body={"ignore_eos": ignore_eos},
        )

    answers = [(await chat(prompt, 24, ignore_eos=False)).choices[0].message.content.strip() for prompt in PROBES]
    start = time.perf_counter()
    replies = await asyncio.gather(*(chat(f"Write a story about robot {i}.") for i in range(NUM_PARALLEL)))
    return sum(r.usage.completion_tokens for r in replies) / (time.perf_counter() - start), answers


def print_quality(metrics: dict[str, dict]) -> None:
    print("\n| merged model quantized | size on disk | perplexity (held-out answers) | exact match, dates | exact match, all tasks |")
    print("|---|---|---|---|---|")
    for scheme, m in metrics.items():
        before, after = m["eval_before"], m["eval_after"]
        print(f"| {scheme.upper()} | {m['weights_bytes_before'] / 2**20:.0f} MB -> {m['weights_bytes_after'] / 2**20:.0f} MB ({m['size_ratio']:.2f}x) "
              f"| {before['perplexity']:.3f} -> {after['perplexity']:.3f} "
              f"| {before['tasks']['dates']['exact_match']:.2f} -> {after['tasks']['dates']['exact_match']:.2f} "
              f"| {before['exact_match']:.2f} -> {after['exact_match']:.2f} |", flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        merged = run_merge(str(ADAPTERS["dates"]), str(tmp / "merged"))
        quantized = {scheme: run_quantize(str(merged), str(tmp / scheme), scheme=scheme, samples=128, eval_samples=50)
                     for scheme in ("w4a16", "w8a8")}
        print_quality({scheme: read_manifest(path).metrics for scheme, path in quantized.items()})
        w4a16, w8a8 = quantized["w4a16"], quantized["w8a8"]
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
    print(f"\n| model | {NUM_PARALLEL} chats, output tok/s | vs base | 'capital of France?' | '14 July 1999 in ISO format' |")
    print("|---|---|---|---|---|")
    for name, (tps, (paris, date)) in rows.items():
        print(f"| {name} | {tps:.1f} | {tps / base:.2f}x | {paris!r} | {date!r} |")

if __name__ == "__main__":
    main()
