"""Export a model to GGUF for llama.cpp, Ollama and LM Studio, plus an Ollama Modelfile.

The GGUF writer is models/gguf_export.py (shared with `serve --engine llamacpp`). The file is
checked by loading it back with transformers' GGUF loader and comparing with the source model.
"""

from pathlib import Path

from tuneserve.artifacts import Manifest, atomic_artifact, refuse_existing, write_manifest
from tuneserve.models import resolve_model
from tuneserve.models.gguf_export import write_gguf
from tuneserve.optimize.merge import compare
from tuneserve.optimize.options import ExportOptions

GGUF_NAME = "model.gguf"


def run_export(options: ExportOptions) -> Path:
    """`tuneserve optimize export --format gguf`: `model` (a merged or plain checkpoint) -> OUT/model.gguf + OUT/Modelfile."""
    o = options
    model_dir = resolve_model(o.model)
    refuse_existing(o.out, o.overwrite)
    with atomic_artifact(o.out, overwrite=o.overwrite) as tmp:
        info = write_gguf(model_dir, tmp / GGUF_NAME, o.type)
        (tmp / "Modelfile").write_text(modelfile(model_dir, f"./{GGUF_NAME}"))
        metrics = {"gguf": info, "size_bytes": (tmp / GGUF_NAME).stat().st_size}
        if o.check:
            metrics["round_trip"] = round_trip(model_dir, tmp / GGUF_NAME)
        write_manifest(tmp, Manifest(kind="gguf", base_model={"name": o.model or model_dir.name, "path": str(model_dir)},
                                     recipe={"export": {"format": o.format, "type": o.type}}, metrics=metrics, parents=[str(model_dir)]))
    return Path(o.out)


def modelfile(model_dir: Path, gguf_path: str) -> str:
    """An Ollama Modelfile: the weights, the chat template in Ollama's Go syntax, the stop tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = tokenizer.chat_template or ""
    lines = [f"# Ollama: ollama create NAME -f Modelfile (made by tuneserve optimize export from {model_dir.name})", f"FROM {gguf_path}"]
    if "<|im_start|>" in template:  # ChatML (SmolLM2, Qwen, ...)
        lines += [
            'TEMPLATE """{{- if .System }}<|im_start|>system',
            "{{ .System }}<|im_end|>",
            "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
            "{{ .Content }}<|im_end|>",
            '{{ end }}<|im_start|>assistant',
            '"""',
            'PARAMETER stop "<|im_end|>"',
            'PARAMETER stop "<|im_start|>"',
        ]
    else:
        lines.append("# The chat template is not ChatML: Ollama reads tokenizer.chat_template from the GGUF file.")
    if tokenizer.eos_token and "<|im_end|>" != tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    return "\n".join(lines) + "\n"


def round_trip(model_dir: Path, gguf_path: Path) -> dict:
    """Load the GGUF back with transformers' loader and compare it with the source (float32 both):
    logit differences and greedy agreement on the merge parity prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loaded_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    probe = "Rewrite the date 3 March 2001 in ISO format. <|im_end|> ünïcödé 🙂"
    return compare(source, loaded, tokenizer) | {
        "same_tokenization": tokenizer(probe).input_ids == loaded_tokenizer(probe).input_ids,
        "same_chat_template": tokenizer.chat_template == loaded_tokenizer.chat_template,
    }
