"""Multi-LoRA and speculative-decoding throughput, side by side in one run, printed as ratios.

Three real servers on the default model:
  A  no LoRA support            -> "base (LoRA off)", the reference
  B  LoRA on, 4 adapter names   -> "base (LoRA on)", "1 adapter", "4 adapters mixed"
  C  --speculative ngram:4      -> single stream on repetitive prompts, against A
The four adapter names are the two committed adapters (dates, units) each loaded twice, so the
engine batches four distinct LoRA slots.

Run: .venv/bin/python benchmarks/serving_lora.py   (about 8 minutes on 2 cores)
"""

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import start_server  # noqa: E402  (the suite's engine settings)
from tests.helpers import ADAPTERS, MODEL  # noqa: E402
from tuneserve.bench.server_process import stop_server  # noqa: E402

NUM_PARALLEL = 32
NUM_TOKENS = 64
ADAPTER_NAMES = {"dates": ADAPTERS["dates"], "units": ADAPTERS["units"], "dates-2": ADAPTERS["dates"], "units-2": ADAPTERS["units"]}
REPETITIVE = [
    "Copy this list exactly, twice: apple, banana, cherry, apple, banana, cherry, apple, banana, cherry.",
    "Repeat after me three times: the quick brown fox jumps over the lazy dog.",
    "Write the numbers 1 2 3 4 5 1 2 3 4 5 1 2 3 4 5 again, exactly as given.",
]


def client_for(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=600, max_retries=0)


async def chat(client, model: str, prompt: str, max_tokens: int = NUM_TOKENS, ignore_eos: bool = True):
    response = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        extra_body={"ignore_eos": ignore_eos},
    )
    return response.usage.completion_tokens, response.choices[0].message.content


async def throughput(client, models: list[str]) -> float:
    """Output tokens/s over NUM_PARALLEL concurrent chats spread round-robin over `models`."""
    await chat(client, models[0], "warm up", 4)
    start = time.perf_counter()
    results = await asyncio.gather(
        *(chat(client, models[i % len(models)], f"Write a story about robot {i}.") for i in range(NUM_PARALLEL))
    )
    return sum(n for n, _ in results) / (time.perf_counter() - start)


async def single_stream(client) -> tuple[float, list[str]]:
    """Tokens/s of one request at a time over the repetitive prompts, and the texts."""
    await chat(client, MODEL, "warm up", 4)
    num_tokens, texts, start = 0, [], time.perf_counter()
    for prompt in REPETITIVE:
        n, text = await chat(client, MODEL, prompt, max_tokens=96, ignore_eos=False)
        num_tokens += n
        texts.append(text)
    return num_tokens / (time.perf_counter() - start), texts


def measure(log_dir: Path, args: list[str], work):
    server = start_server(log_dir, *args)
    try:
        return asyncio.run(work(client_for(server)))
    finally:
        stop_server(server)


def main() -> None:
    rows = {}
    adapters = [a for name, path in ADAPTER_NAMES.items() for a in ("--adapter", f"{name}={path}")]
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)

        async def plain(client):
            return await throughput(client, [MODEL]), await single_stream(client)

        base_tps, (base_single, base_texts) = measure(log_dir, [], plain)
        rows["base (LoRA off)"] = ("32 chats", base_tps)
        rows["single stream, repetitive prompts"] = ("1 stream", base_single)
        print(f"A done: {base_tps:.1f} tok/s, single {base_single:.1f}", flush=True)

        async def lora(client):
            return (
                await throughput(client, [MODEL]),
                await throughput(client, ["dates"]),
                await throughput(client, list(ADAPTER_NAMES)),
            )

        lora_base, one, four = measure(log_dir, [*adapters, "--max-loras", "4"], lora)
        rows["base (LoRA on)"] = ("32 chats", lora_base)
        rows["1 adapter"] = ("32 chats", one)
        rows["4 adapters mixed"] = ("32 chats", four)
        print("B done", flush=True)

        spec_single, spec_texts = measure(log_dir, ["--speculative", "ngram:4"], single_stream)
        rows["ngram speculative, repetitive prompts"] = ("1 stream", spec_single)

    print("\n| setting | load | output tok/s | ratio |\n|---|---|---|---|")
    for name, (load, tps) in rows.items():
        reference = base_single if load == "1 stream" else base_tps
        print(f"| {name} | {load} | {tps:.1f} | {tps / reference:.2f}x |")
    print(f"\nspeculative greedy output identical to plain decoding: {spec_texts == base_texts}")


if __name__ == "__main__":
    main()
