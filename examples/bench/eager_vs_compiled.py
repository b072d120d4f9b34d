"""Is torch.compile correct on this CPU? Greedy agreement of eager and compiled serving with
transformers in float32 (and in bf16, the serving default), on the demo and general prompts.

Speed comes from examples/bench/cpu.yaml ("base bf16" vs "compiled"); this script checks answers.
Run: .venv/bin/python examples/bench/eager_vs_compiled.py   (about 8 minutes on 2 cores)
"""

import tempfile
from pathlib import Path

from tuneserve.bench import BenchMatrix
from tuneserve.bench.agreement import agreement_prompts, greedy_agreement, reference_answers, served_answers
from tuneserve.bench.run import serving
from tuneserve.models import resolve_model

MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 32
SETTINGS = {
    "eager, float32": {"dtype": "float32"},
    "compiled, float32": {"dtype": "float32", "enforce_eager": False},
    "eager, bf16": {},
    "compiled, bf16": {"enforce_eager": False},
}


def main() -> None:
    prompts = agreement_prompts()
    reference = reference_answers(resolve_model(MODEL), prompts, MAX_TOKENS)
    matrix = BenchMatrix(model=MODEL, settings=[{"name": n, "serve": v} for n, v in SETTINGS.items()])
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for setting in matrix.settings:
            with serving(matrix, setting, Path(log_dir)) as target:
                answers = served_answers(target.base_url, target.model, prompts, MAX_TOKENS)
            differing = [p for p, a, r in zip(prompts, answers, reference, strict=True) if a != r]
            rows.append((setting.name, greedy_agreement(answers, reference), target.startup_s, differing))
            print(f"{setting.name}: {rows[-1][1]:.3f}, started in {target.startup_s:.0f} s", flush=True)
    print(f"\n| setting | greedy agreement with transformers float32 ({len(prompts)} prompts, {MAX_TOKENS} tokens) | start-up s |")
    print("|---|---|---|")
    for name, share, startup_s, _ in rows:
        print(f"| {name} | {share:.3f} ({round(share * len(prompts))} of {len(prompts)}) | {startup_s:.0f} |")
    for name, _, _, differing in rows:
        print(f"\n{name}: differs on {differing[:5]}{' ...' if len(differing) > 5 else ''}")


if __name__ == "__main__":
    main()
