"""Merging real trained adapters: the merged model behaves like base + adapter."""

import json
import shutil

import pytest

from tests.helpers import ADAPTERS
from tuneserve.artifacts import read_manifest
from tuneserve.finetune import run_sft
from tuneserve.finetune.recipe import Recipe
from tuneserve.models import resolve_model
from tuneserve.optimize import OptimizeError, run_merge
from tuneserve.optimize.options import MergeOptions

# Both sides run in float32, so what differs is only the merge's one rounding of W + BA to bf16.
# Measured on the committed dates adapter (2026-11-25): max |logit diff| 0.21, mean 0.021 over
# prompt + answer positions, every greedy token and answer identical. The thresholds leave ~3x
# room; a wrong merge (scale, transposition, a missed module) moves logits by whole units (the
# QLoRA test below shows 3.5 mean when merging into the wrong base).
MAX_LOGIT_DIFF = 0.6
MEAN_LOGIT_DIFF = 0.06


def test_lora_merge_matches_base_plus_adapter(tmp_path):
    out = run_merge(MergeOptions(adapter=str(ADAPTERS["dates"]), out=str(tmp_path / "merged")))
    parity = read_manifest(out).metrics["parity"]
    print("LoRA merge parity:", parity)
    assert parity["greedy_agreement"] == 1.0 and parity["token_agreement"] == 1.0
    assert parity["max_abs_logit_diff"] < MAX_LOGIT_DIFF
    assert parity["mean_abs_logit_diff"] < MEAN_LOGIT_DIFF
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert read_manifest(out).recipe["merge"]["mode"] == "original"
    # Not only the figures the merge measured itself: the merged weights answer as the adapter
    # was trained to, and the base does not.
    assert greedy_answer(out, DATE_PROMPT) == "2001-03-03"
    assert greedy_answer(resolve_model(None), DATE_PROMPT) != "2001-03-03"


DATE_PROMPT = "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only."


def greedy_answer(model_dir, prompt: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.slow  # ~60 s: in make test-slow (make test keeps QLoRA training and the LoRA merge)
def test_qlora_merge_dequantizes_the_4bit_base_first(tmp_path):
    recipe = Recipe(
        adapter="qlora", datasets=[{"path": "demo:dates"}], lora_r=8, lora_target_modules=["q_proj", "v_proj"],
        max_steps=2, micro_batch_size=2, sequence_len=128, val_set_size=0, eval_samples=0,
        output_dir=str(tmp_path / "qlora"),
    )
    adapter = run_sft(recipe)
    dequantized = read_manifest(run_merge(MergeOptions(adapter=str(adapter), out=str(tmp_path / "deq")))).metrics["parity"]
    original = read_manifest(run_merge(MergeOptions(adapter=str(adapter), out=str(tmp_path / "orig"), mode="original"))).metrics["parity"]
    print("QLoRA merge parity, dequantized:", dequantized, "original:", original)
    assert dequantized["mean_abs_logit_diff"] < original["mean_abs_logit_diff"]  # closer to what it trained on
    assert dequantized["token_agreement"] > original["token_agreement"]
    assert dequantized["token_agreement"] > 0.9


def test_adapter_base_mismatch_is_refused(tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(ADAPTERS["dates"], adapter)
    manifest = json.loads((adapter / "tuneserve.json").read_text())
    manifest["base_model"]["sha256"] = "f" * 64
    (adapter / "tuneserve.json").write_text(json.dumps(manifest))
    with pytest.raises(OptimizeError, match="adapter/base mismatch"):
        run_merge(MergeOptions(adapter=str(adapter), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(OptimizeError, match="not a PEFT adapter directory"):
        run_merge(MergeOptions(adapter=str(tmp_path), out=str(tmp_path / "out")))
    with pytest.raises(OptimizeError, match="applies to QLoRA adapters"):
        run_merge(MergeOptions(adapter=str(ADAPTERS["dates"]), out=str(tmp_path / "out"), mode="dequantized"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="set overwrite to replace it"):  # the one check every stage shares
        run_merge(MergeOptions(adapter=str(ADAPTERS["dates"]), out=str(tmp_path / "exists")))
