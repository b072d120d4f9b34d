"""A base model with a LoRA adapter on top, and the two folded into one checkpoint."""

from pathlib import Path

from tuneserve.models.training import quantization_config


def load_with_adapter(base_dir: Path, adapter_dir: Path, quantization: dict | None = None, dequantize: bool = False, dtype: str = "bfloat16"):
    """The base in `dtype` (or 4-bit with `quantization`, the recipe's bnb_4bit_* settings; then
    dequantized back to `dtype` with `dequantize`) with the adapter applied, in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM


    kwargs: dict = {"dtype": getattr(torch, dtype)}
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(
            quantization.get("bnb_4bit_quant_type", "nf4"),
            quantization.get("bnb_4bit_use_double_quant", True),
            quantization.get("bnb_4bit_compute_dtype", "bfloat16"),
        )
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if quantization is not None and dequantize:
        model = model.dequantize().to(getattr(torch, dtype))
    return PeftModel.from_pretrained(model, adapter_dir).eval()


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path, quantization: dict | None = None) -> None:
    """Write base + adapter, merged, as a full bf16 checkpoint (with tokenizer) into `out_dir`.

    With `quantization`, the base is first quantized as in QLoRA training and dequantized, so the
    adapter lands on the weights it was trained against.
    """
    from transformers import AutoTokenizer

    merged = load_with_adapter(base_dir, adapter_dir, quantization, dequantize=True).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
