"""lm-evaluation-harness through tuneserve vs in-process `hf`, on the same weights and task.

    .venv/bin/python examples/eval/lm_eval_parity.py            # starts a server itself
    .venv/bin/python examples/eval/lm_eval_parity.py --url http://127.0.0.1:8000

Prints both accuracies and how many items the two runs picked the same answer on.
"""

import argparse
import json
import tempfile
from pathlib import Path

from tuneserve.evals.harness import hf_args, run_lm_eval, server_args, write_choice_task
from tuneserve.models import DEFAULT_MODEL, resolve_model


def compare(base_url: str, served_name: str, model_dir: str, task_dir: Path) -> dict:
    task = write_choice_task(task_dir)
    served = run_lm_eval("local-completions", server_args(base_url, served_name, model_dir), task_dir, task)
    local = run_lm_eval("hf", hf_args(model_dir), task_dir, task)
    return {"task": task, **parity(served, local)}


def parity(served: dict, local: dict) -> dict:
    """How close two runs of the same task are: accuracy, picks, and each choice's log-likelihood."""
    pairs = [(a, b) for row_a, row_b in zip(served["scores"], local["scores"], strict=True) for a, b in zip(row_a, row_b, strict=True)]
    return {
        "num_items": served["num_items"],
        "acc_tuneserve": served["acc"],
        "acc_hf": local["acc"],
        "num_same_picks": sum(a == b for a, b in zip(served["picks"], local["picks"], strict=True)),
        "max_abs_loglik_diff": max(abs(a - b) for a, b in pairs),
        "mean_abs_loglik_diff": sum(abs(a - b) for a, b in pairs) / len(pairs),
        "mean_abs_loglik": sum(abs(b) for _, b in pairs) / len(pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running tuneserve server (default: start one)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    model_dir = str(resolve_model(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            result = compare(args.url, args.model, model_dir, Path(tmp) / "task")
        else:
            from tuneserve.server.process import start_server, stop_server

            server = start_server(Path(tmp), "--model", args.model)
            try:
                result = compare(server.base_url, args.model, model_dir, Path(tmp) / "task")
            finally:
                stop_server(server)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
