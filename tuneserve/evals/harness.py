"""lm-evaluation-harness on tuneserve's own data: a log-likelihood task from local files, run
through the server (`local-completions`: echo + logprobs on /v1/completions) or in-process
(`hf`), so the two can be compared on the same weights.

The task is two-choice: each held-out demo sample's answer against its plausible wrong answer
(the same pairs preference training uses), scored by the summed log-likelihood of each choice.
"""

import json
import random
from pathlib import Path
from typing import Any

from tuneserve.data.demo import TASKS, demo_samples

TASK_NAME = "tuneserve_demo_choice"


def write_choice_task(task_dir: Path, tasks: tuple[str, ...] = tuple(TASKS), num_per_task: int = 15) -> str:
    """Write the task's data and lm-eval YAML into `task_dir`; returns the task name."""
    task_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for task in tasks:
        for s in demo_samples(task, "held_out")[:num_per_task]:
            choices = [s.answer, s.wrong]
            rng.shuffle(choices)
            rows.append({"question": s.prompt, "choices": choices, "label": choices.index(s.answer)})
    data = task_dir / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task_dir / f"{TASK_NAME}.yaml").write_text(
        f"task: {TASK_NAME}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\n"
        'target_delimiter: " "\n'
        "metric_list:\n  - metric: acc\n"
    )
    return TASK_NAME


def run_lm_eval(model: str, model_args: dict[str, Any], task_dir: Path, task: str = TASK_NAME) -> dict:
    """One lm-eval run: acc, and per item the choice picked and each choice's log-likelihood."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model=model, model_args=model_args, tasks=[task], task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True, bootstrap_iters=0, random_seed=0,
    )
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    scores = [[r[0][0] for r in s["resps"]] for s in samples]  # log-likelihood of each choice
    picks = [max(range(len(row)), key=row.__getitem__) for row in scores]
    return {"acc": results["results"][task]["acc,none"], "picks": picks, "scores": scores, "num_items": len(picks)}


def server_args(base_url: str, served_name: str, tokenizer_dir: str, num_concurrent: int = 4) -> dict:
    """local-completions against a running server, tokenizing locally (lm-eval's default).

    lm-eval reads the server's key from OPENAI_API_KEY.
    """
    return {"model": served_name, "base_url": f"{base_url}/v1/completions", "tokenizer": tokenizer_dir, "num_concurrent": num_concurrent, "max_retries": 1}


def hf_args(model_dir: str, dtype: str | None = None) -> dict:
    """lm-eval's `hf` backend on the weights, by default in the dtype the server's engine runs here."""
    from tuneserve.engine import compute_dtype

    return {"pretrained": model_dir, "dtype": dtype or compute_dtype(), "device": "cpu"}
