"""Fold a LoRA/QLoRA adapter into a full bf16 model, and report how faithful the result is."""

from pathlib import Path

from tuneserve.artifacts import Manifest, atomic_artifact, read_manifest, refuse_existing, write_manifest
from tuneserve.models import ModelError, model_fingerprint, resolve_model
from tuneserve.models.identity import base_identity, base_mismatch, read_adapter_config
from tuneserve.models.merge import load_with_adapter, merge_lora
from tuneserve.optimize.errors import OptimizeError
from tuneserve.optimize.options import MergeOptions

PARITY_PROMPTS = [
    "What is the capital of France?",
    "Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only.",
    "Convert 7 km to meters. Answer with the number only.",
    'Extract the person\'s name and age as JSON with keys "name" and "age": Lena, aged 33, works as a pilot in Oslo.',
    "Write one sentence about the sea.",
    "What is 451 + 372? Answer with the number only.",
]
NUM_GREEDY_TOKENS = 32


def run_merge(options: MergeOptions) -> Path:
    """`tuneserve optimize merge`: adapter + base -> a plain checkpoint in `out`, with parity metrics.

    QLoRA adapters default to mode "dequantized": the 4-bit base they were trained against is
    dequantized to bf16 first, so the merged weights are the ones the adapter learned on.
    "original" merges into the original bf16 weights instead.
    """
    from transformers import AutoTokenizer

    o = options
    adapter_dir, recipe, base_dir = _inputs(o.adapter, o.base)
    is_qlora = recipe.get("adapter") == "qlora"
    mode = o.mode or ("dequantized" if is_qlora else "original")
    if mode == "dequantized" and not is_qlora:
        raise OptimizeError("mode dequantized applies to QLoRA adapters; this adapter was trained on a bf16 base")
    refuse_existing(o.out, o.overwrite)
    with atomic_artifact(o.out, overwrite=o.overwrite) as tmp:
        merge_lora(base_dir, adapter_dir, tmp, quantization=recipe if mode == "dequantized" else None)
        # The reference is what training saw: the adapter, unmerged, on the base weights (for QLoRA
        # the 4-bit ones, dequantized). Both sides run in float32, so the figures measure what
        # the merge changed (W + BA rounded to bf16 once) and not bf16 arithmetic noise.
        reference = load_with_adapter(base_dir, adapter_dir, quantization=recipe if is_qlora else None, dequantize=True, dtype="float32")
        parity = compare(reference, _load_plain(tmp), AutoTokenizer.from_pretrained(base_dir))
        write_manifest(tmp, Manifest(
            kind="model",
            base_model=_base_identity(adapter_dir, base_dir),
            recipe={"merge": {"adapter": str(adapter_dir), "mode": mode, "adapter_recipe": recipe}},
            metrics={"parity": parity},
            parents=[str(adapter_dir), str(base_dir)],
        ))
    return Path(o.out)


def _inputs(adapter: str, base: str | None) -> tuple[Path, dict, Path]:
    adapter_dir = Path(adapter).expanduser()
    try:
        config = read_adapter_config(adapter_dir)
    except ModelError as e:
        raise OptimizeError(str(e)) from None
    manifest = read_manifest(adapter_dir)
    trained_on = manifest.base_model if manifest else {}
    base_ref = base or trained_on.get("name") or config.get("base_model_name_or_path")
    if not base_ref:
        raise OptimizeError(f"{adapter}: no base model recorded; give base")
    base_dir = resolve_model(base_ref)
    reason = base_mismatch(adapter_dir, config, model_fingerprint(base_dir), {base_ref, str(base_dir), base_dir.name})
    if reason:
        raise OptimizeError(f"adapter/base mismatch: {adapter}: {reason}")
    return adapter_dir, (manifest.recipe if manifest else {}), base_dir


def _base_identity(adapter_dir: Path, base_dir: Path) -> dict:
    manifest = read_manifest(adapter_dir)
    return base_identity(manifest.base_model.get("name") if manifest else base_dir.name, base_dir)


def _load_plain(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def compare(reference, candidate, tokenizer, prompts: list[str] = PARITY_PROMPTS) -> dict:
    """How closely `candidate` follows `reference` on each prompt plus the reference's greedy answer.

    Logit differences over all those positions; token agreement: the share of answer positions
    where both pick the same next token (teacher-forced); greedy agreement: the share of prompts
    whose NUM_GREEDY_TOKENS-token greedy answers are identical (one near-tie flips a whole answer).
    """
    import torch

    max_diff, sum_diff, num_values, same_tokens, num_tokens, same_answers = 0.0, 0.0, 0, 0, 0, 0
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        greedy = {"max_new_tokens": NUM_GREEDY_TOKENS, "do_sample": False, "pad_token_id": tokenizer.eos_token_id}
        with torch.no_grad():
            sequence = reference.generate(ids, **greedy)
            logits = [m(sequence).logits.float() for m in (reference, candidate)]
            same_answers += torch.equal(candidate.generate(ids, **greedy), sequence)
        diff = (logits[0] - logits[1]).abs()
        max_diff = max(max_diff, diff.max().item())
        sum_diff, num_values = sum_diff + diff.sum().item(), num_values + diff.numel()
        answer = slice(ids.shape[1] - 1, sequence.shape[1] - 1)  # positions that predict answer tokens
        same_tokens += (logits[0][0, answer].argmax(-1) == logits[1][0, answer].argmax(-1)).sum().item()
        num_tokens += answer.stop - answer.start
    return {
        "max_abs_logit_diff": round(max_diff, 4),
        "mean_abs_logit_diff": round(sum_diff / num_values, 5),
        "token_agreement": round(same_tokens / num_tokens, 4),
        "greedy_agreement": round(same_answers / len(prompts), 4),
        "num_prompts": len(prompts),
    }
