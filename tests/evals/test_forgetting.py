"""The forgetting report through the real engine: the committed `dates` adapter, trained on dates
only, loses general knowledge the base has; mixing general data into the finetune loses less."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ADAPTERS
from tuneserve.artifacts import read_manifest


@pytest.mark.slow  # ~100 s of two engines on 87 items; `make test` keeps the suite, arena and classifier tests
def test_forgetting_report_on_the_dates_adapter_measures_what_it_lost(tmp_path):
    adapter = shutil.copytree(ADAPTERS["dates"], tmp_path / "dates")
    out = tmp_path / "forgetting.json"
    result = subprocess.run([sys.executable, "-m", "tuneserve", "eval", "forgetting", "--adapter", str(adapter), "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    em, ppl = report["exact_match"], report["base_answers_perplexity"]
    print(f"dates adapter on the general suite: exact match {em['base']:.3f} -> {em['candidate']:.3f}; "
          f"perplexity of the base's answers {ppl['base']:.2f} -> {ppl['candidate']:.2f}")
    assert report["num_items"] == 87 and em["base"] >= 0.5  # the base knows most of the suite
    assert report["exact_match_lost"] >= 0.15  # measured 0.37 on this machine
    assert ppl["candidate"] > 1.2 * ppl["base"]
    assert report["examples"] and all(e["base"] != e["candidate"] for e in report["examples"])
    assert "exact match lost" in result.stdout
    assert read_manifest(adapter).metrics["forgetting"] == report  # stored with the adapter


def test_forgetting_needs_one_candidate(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tuneserve", "eval", "forgetting"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "give --adapter (on the base) or --candidate" in result.stderr
    result = subprocess.run([sys.executable, "-m", "tuneserve", "eval", "suite", "nonsense"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown suite 'nonsense'" in result.stderr


@pytest.mark.slow
def test_mixing_general_data_into_the_finetune_forgets_less(tmp_path):
    """Trains lora-dates.yaml with mix_general 0.1 (~4 min) and compares with the committed adapter."""
    from tuneserve.evals.suites import forgetting_report
    from tuneserve.finetune import run_sft
    from tuneserve.finetune.recipe import load_recipe

    plain = forgetting_report(adapter=str(shutil.copytree(ADAPTERS["dates"], tmp_path / "dates")))
    recipe = load_recipe("examples/recipes/lora-dates-mixed.yaml", "sft", [], output_dir=str(tmp_path / "mixed"))
    mixed_dir = run_sft(recipe)
    mixed = forgetting_report(adapter=str(mixed_dir))
    print(f"exact match lost: plain {plain['exact_match_lost']:.3f}, mixed {mixed['exact_match_lost']:.3f}")
    assert mixed["exact_match_lost"] < plain["exact_match_lost"] - 0.1
    assert read_manifest(mixed_dir).metrics["eval_after"]["exact_match"] >= 0.8  # and it still learned dates
