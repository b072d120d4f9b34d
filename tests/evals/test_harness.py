"""lm-evaluation-harness through the server scores like lm-eval's own `hf` backend on the same weights."""

import importlib.util

import pytest

from tests.helpers import ADMIN_KEY, EXAMPLES, MODEL
from tuneserve.evals.harness import hf_args, run_lm_eval, server_args, write_choice_task
from tuneserve.models import resolve_model

pytestmark = pytest.mark.engine


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_completions_matches_hf_on_the_same_weights(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", ADMIN_KEY)
    model_dir = str(resolve_model(MODEL))
    task = write_choice_task(tmp_path, num_per_task=10)
    served = run_lm_eval("local-completions", server_args(server.base_url, MODEL, model_dir), tmp_path, task)
    local = run_lm_eval("hf", hf_args(model_dir), tmp_path, task)
    result = load_example("lm_eval_parity").parity(served, local)
    print(result)
    n = result["num_items"]
    assert n == 40
    assert 0.55 <= result["acc_hf"] <= 0.9  # the task separates: this model is above chance, not perfect
    assert abs(result["acc_tuneserve"] - result["acc_hf"]) <= 2 / n
    assert result["num_same_picks"] >= n - 2
    # each choice's log-likelihood agrees to a few percent (one dtype in both, different kernels)
    assert result["mean_abs_loglik_diff"] < 0.05 * result["mean_abs_loglik"]
