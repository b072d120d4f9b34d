"""Named suites and the forgetting report.

Suites: `demo` (the demo tasks' held-out samples, exact match) and `general` (facts and
instructions, see tuneserve.data.general). The forgetting report scores a finetuned model (an
adapter on its base, or a merged/quantized model directory) against its base on the general
suite, two ways:
- exact match on the checkable answers: what the finetune lost;
- the perplexity of the base's own greedy answers under each model: how far the finetuned model
  moved from what the base would say, also where neither is "right".
"""

import asyncio
import math
from pathlib import Path

from tuneserve.artifacts import read_manifest, write_manifest
from tuneserve.data import DataError, user
from tuneserve.data.general import general_items
from tuneserve.engine import start_eval_engine
from tuneserve.evals.scoring import EvalSample, SampleScore, _adapter, _Scorer, evaluate, load_eval_samples, summarize
from tuneserve.models import resolve_model
from tuneserve.models.identity import read_adapter_config

SUITES = ("demo", "demo:<task>", "general")


def suite_samples(suite: str, num_samples: int = 50) -> list[EvalSample]:
    """A suite's held-out samples (`num_samples` per demo task; the whole general suite)."""
    if suite == "demo" or suite.startswith("demo:"):
        return load_eval_samples(suite.removeprefix("demo").removeprefix(":") or "all", num_samples=num_samples)
    if suite == "general":
        return [EvalSample(i.category, user(i.prompt), i.answer, match="word_cased" if i.case_sensitive else "word")
                for i in general_items("held_out")]
    raise DataError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")


def run_suite(suite: str, model: str | None = None, adapter: str | None = None, num_samples: int = 50) -> dict:
    """`tuneserve eval suite`: a suite's scores for a model, or a model plus adapter."""

    return evaluate(resolve_model(model), suite_samples(suite, num_samples), _adapter(adapter))


def forgetting_report(model: str | None = None, adapter: str | None = None, candidate: str | None = None) -> dict:
    """`tuneserve eval forgetting`: what `adapter` (on `model`) or the `candidate` model directory
    lost on the general suite against the base. Stored in the adapter's or candidate's manifest."""

    if (adapter is None) == (candidate is None):
        raise DataError("give --adapter (on the base) or --candidate (a model directory), one of them")
    base_dir = resolve_model(model)
    samples = suite_samples("general")
    base_scores, base_on_own = asyncio.run(_suite_scores(base_dir, samples))
    base_answers = [s.output for s in base_scores]
    if adapter is not None:  # served on the base through the LoRA path, as `tuneserve serve` serves it
        candidate_dir = _adapter(adapter)
        cand_scores, cand_on_base = asyncio.run(_suite_scores(base_dir, samples, base_answers, candidate_dir))
    else:
        candidate_dir = resolve_model(candidate)
        cand_scores, cand_on_base = asyncio.run(_suite_scores(candidate_dir, samples, base_answers))
    report = _report(samples, base_scores, cand_scores, base_on_own, cand_on_base)
    manifest = read_manifest(candidate_dir)
    if manifest is not None:
        manifest.metrics["forgetting"] = report
        write_manifest(candidate_dir, manifest)
    return report


async def _suite_scores(model_dir: Path, samples: list[EvalSample], reference_answers: list[str] | None = None,
                        adapter_dir: Path | None = None):
    """One engine: every sample scored (greedy output, exact match, answer log-prob), and with
    `reference_answers` the log-prob of each of those as the answer, too; with `adapter_dir`, the
    model with that adapter."""
    from transformers import AutoTokenizer
    from vllm.lora.request import LoRARequest

    engine = start_eval_engine(model_dir, read_adapter_config(adapter_dir).get("r") if adapter_dir else None)
    try:
        lora = LoRARequest("evaluated", 1, str(adapter_dir)) if adapter_dir else None
        scorer = _Scorer(engine, AutoTokenizer.from_pretrained(model_dir), lora)
        scores = list(await asyncio.gather(*(scorer.score(s) for s in samples)))
        answers = reference_answers if reference_answers is not None else [s.output for s in scores]
        refs = [EvalSample(s.task, s.prompt, a) for s, a in zip(samples, answers, strict=True)]
        on_refs = list(await asyncio.gather(*(scorer.logprob(r) for r in refs)))
        return scores, on_refs
    finally:
        engine.shutdown()
        scorer = engine = None  # AsyncLLM.__del__ fails noisily if it runs at interpreter exit


def _report(samples, base: list[SampleScore], cand: list[SampleScore], base_on_own, cand_on_base) -> dict:
    base_sum, cand_sum = summarize(base), summarize(cand)
    base_ppl, cand_ppl = _perplexity(base_on_own), _perplexity(cand_on_base)
    return {
        "suite": "general",
        "num_items": len(samples),
        "exact_match": {"base": base_sum["exact_match"], "candidate": cand_sum["exact_match"]},
        "exact_match_lost": base_sum["exact_match"] - cand_sum["exact_match"],
        "base_answers_perplexity": {"base": base_ppl, "candidate": cand_ppl},
        "agreement_with_base": sum(b.output.strip() == c.output.strip() for b, c in zip(base, cand, strict=True)) / len(base),
        "categories": {
            t: {"base": base_sum["tasks"][t]["exact_match"], "candidate": cand_sum["tasks"][t]["exact_match"]}
            for t in base_sum["tasks"]
        },
        "examples": [
            {"prompt": s.prompt[-1]["content"], "answer": s.answer, "base": b.output, "candidate": c.output}
            for s, b, c in zip(samples, base, cand, strict=True) if b.is_exact and not c.is_exact
        ][:5],
    }


def _perplexity(logprobs: list[tuple[float, int]]) -> float:
    """Per-token perplexity over all answers (each answer's tokens and its end-of-turn)."""
    return math.exp(-sum(lp for lp, _ in logprobs) / sum(n for _, n in logprobs))
