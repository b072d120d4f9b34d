"""Single-stream speed with and without a distilled draft model, one run, printed as a ratio.

Distills an 8-layer student from the default model (see `tuneserve optimize distill`), then
serves the teacher alone and with `--speculative draft:STUDENT:K`, one request at a time.

Run: .venv/bin/python benchmarks/draft_speedup.py   (about 15 minutes on 2 cores)
"""

import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import start_server  # noqa: E402
from tests.helpers import metric, read_metrics  # noqa: E402
from tuneserve.artifacts import read_manifest  # noqa: E402
from tuneserve.bench.server_process import stop_server  # noqa: E402
from tuneserve.optimize import run_distill  # noqa: E402

PROMPTS = [
    "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD).",
    "What is the capital of France?",
    "Write two sentences about the sea.",
    "Convert 7 km to meters.",
    "Name three colors and describe each briefly.",
]
STEPS = 150
DRAFT_TOKENS = (1, 3)


def single_stream(base_url: str) -> tuple[float, list[str]]:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=600, max_retries=0)
    chat = lambda p: client.chat.completions.create(  # noqa: E731
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": p}], temperature=0, max_tokens=96
    )
    chat("warm up")
    num_tokens, texts, start = 0, [], time.perf_counter()
    for prompt in PROMPTS:
        reply = chat(prompt)
        num_tokens += reply.usage.completion_tokens
        texts.append(reply.choices[0].message.content)
    return num_tokens / (time.perf_counter() - start), texts


def acceptance_rate(base_url: str) -> float:
    """Accepted / proposed draft tokens, from vLLM's counters on /metrics."""
    with httpx.Client(base_url=base_url) as http:
        samples = read_metrics(http)
    proposed = metric(samples, "vllm:spec_decode_num_draft_tokens_total")
    return metric(samples, "vllm:spec_decode_num_accepted_tokens_total") / proposed if proposed else float("nan")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student = run_distill(None, str(tmp / "student"), student_layers_count=8, steps=STEPS, eval_samples=20)
        metrics = read_manifest(student).metrics
        rows, settings = {}, {"teacher alone": []}
        for k in DRAFT_TOKENS:
            settings[f"teacher + distilled draft (K={k})"] = ["--speculative", f"draft:{student}:{k}"]
        for name, args in settings.items():
            server = start_server(tmp, *args)
            try:
                rows[name] = (*single_stream(server.base_url), acceptance_rate(server.base_url) if args else None)
            finally:
                stop_server(server)
    alone, alone_texts, _ = rows["teacher alone"]
    print("\nperplexity on held-out demo answers: teacher {:.2f}, student untrained {:.2f}, distilled {:.2f}".format(
        metrics["eval_teacher"]["perplexity"], metrics["eval_student_before"]["perplexity"], metrics["eval_student_after"]["perplexity"]))
    print("\n| setting (bf16) | single-stream tok/s | ratio | draft tokens accepted | greedy answers identical to the teacher's |\n|---|---|---|---|---|")
    for name, (tps, texts, accepted) in rows.items():
        same = sum(a == b for a, b in zip(texts, alone_texts, strict=True))
        print(f"| {name} | {tps:.1f} | {tps / alone:.2f}x | {'-' if accepted is None else f'{accepted:.0%}'} | {same} of {len(texts)} |")

if __name__ == "__main__":
    main()
