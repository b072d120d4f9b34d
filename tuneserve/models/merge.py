"""Fold a LoRA adapter into its base: a plain checkpoint that any engine loads without LoRA."""

import json
from pathlib import Path


def adapter_rank(adapter_dir: Path) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("r", 16))


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str = "bfloat16") -> None:
    """Write base + adapter, merged, as a full checkpoint (with tokenizer) into `out_dir`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
