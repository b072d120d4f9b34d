"""GGUF file -> Hugging Face checkpoint (bf16 safetensors + tokenizer + chat template)."""

import json
from pathlib import Path

from rich.console import Console

console = Console(stderr=True)


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> None:
    """Dequantize `gguf_path` into a normal HF checkpoint in `out_dir` (which must exist).

    transformers does the conversion and shows its own per-tensor progress bar.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = getattr(torch, dtype)
    with console.status(f"reading {gguf_path.name}"):
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch_dtype,
    )
    with console.status(f"writing {out_dir}"):
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    _cap_tokenizer_length(out_dir, model.config.max_position_embeddings)


def _cap_tokenizer_length(out_dir: Path, context_length: int) -> None:
    # GGUF tokenizers come out with model_max_length=1e30; tools that truncate read this value.
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["model_max_length"] = context_length
    path.write_text(json.dumps(config, indent=2) + "\n")
