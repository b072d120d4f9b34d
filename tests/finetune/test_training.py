"""Each recipe trains a few real steps on the default model and writes a loadable artifact."""

import json

import pytest
from safetensors import safe_open

from tuneserve.artifacts import read_manifest
from tuneserve.finetune import run_dpo, run_eval, run_orpo, run_sft
from tuneserve.models import model_fingerprint, resolve_model


def assert_peft_adapter(out, num_steps: int):
    from peft import PeftConfig

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and all("lora_" in n for n in names)
    assert PeftConfig.from_pretrained(out).peft_type == "LORA"
    manifest = read_manifest(out)
    assert manifest.kind == "adapter"
    assert manifest.metrics["global_step"] == num_steps
    assert manifest.base_model["sha256"] == model_fingerprint(resolve_model(None))
    assert set(manifest.metrics["dataset_sha256"]) == {"demo:dates"}
    assert manifest.metrics["peak_rss_mib"] > 0
    assert not (out.parent / f".{out.name}.checkpoints").exists()  # checkpoints cleaned up
    return manifest


def test_sft_lora_writes_a_peft_adapter_and_eval_records_into_it(tiny_recipe):
    out = run_sft(tiny_recipe())
    assert_peft_adapter(out, 3)
    results = run_eval(adapter=str(out), task="dates", num_samples=4)
    assert results["num_samples"] == 4 and 0 <= results["exact_match"] <= 1 and results["perplexity"] > 1
    assert read_manifest(out).metrics["evals"]["demo:dates"] == results


def test_sft_qlora_trains_on_a_4bit_base(tiny_recipe):
    out = run_sft(tiny_recipe(adapter="qlora", max_steps=2))
    manifest = assert_peft_adapter(out, 2)
    assert manifest.recipe["adapter"] == "qlora"


@pytest.mark.parametrize("runner,method", [(run_dpo, "dpo"), (run_orpo, "orpo")])
def test_preference_recipes_write_peft_adapters(tiny_recipe, runner, method):
    out = runner(tiny_recipe(method))
    manifest = assert_peft_adapter(out, 3)
    assert manifest.recipe["method"] == method
