"""Evaluation below the stages: held-out samples scored through the real engine (exact match,
perplexity, preference accuracy). Finetune, optimize and bench all call it."""

from tuneserve.evals.scoring import (
    EvalSample,
    evaluate,
    greedy_answers,
    is_exact_match,
    load_eval_samples,
    run_eval,
    summarize,
)

__all__ = ["EvalSample", "evaluate", "greedy_answers", "is_exact_match", "load_eval_samples", "run_eval", "summarize"]
