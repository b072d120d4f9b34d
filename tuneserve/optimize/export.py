"""Export a model to GGUF for llama.cpp, Ollama and LM Studio, plus an Ollama Modelfile.

Written with the `gguf` package (llama.cpp's own Python writer): its tensor-name map, its
quantizers (Q8_0) and its SpecialVocab (merges, special tokens, chat template), so nothing about
the format is written by hand here. Llama-architecture models (SmolLM2, Llama, Mistral-style)
are supported; q/k projections are permuted as llama.cpp's converter does. The file is checked
by loading it back with transformers' GGUF loader and comparing with the source model.
"""

from pathlib import Path
from typing import Literal

from tuneserve.artifacts import Manifest, atomic_artifact, refuse_existing, write_manifest
from tuneserve.models import resolve_model
from tuneserve.models.facts import weight_files
from tuneserve.optimize.errors import OptimizeError
from tuneserve.optimize.merge import compare
from tuneserve.optimize.options import ExportOptions

GgufType = Literal["f32", "f16", "bf16", "q8_0"]
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


def write_gguf(model_dir: Path, path: Path, gguf_type: GgufType) -> dict:
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer


    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in ("llama", "mistral"):
        raise OptimizeError(f"GGUF export supports Llama-architecture models (llama, mistral); {model_dir} is {config.model_type}")
    writer = gguf.GGUFWriter(path, "llama")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(model_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    writer.add_file_type(file_type)
    _add_vocab(writer, AutoTokenizer.from_pretrained(model_dir), model_dir, config.vocab_size)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    num_tensors = 0
    for file in weight_files(model_dir):
        with safe_open(file, "pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise OptimizeError(f"GGUF export: no GGUF name for tensor {hf_name}")
                data = f.get_tensor(hf_name).float().numpy()
                if hf_name.endswith("q_proj.weight"):
                    data = _permute(data, config.num_attention_heads)
                elif hf_name.endswith("k_proj.weight"):
                    data = _permute(data, config.num_key_value_heads)
                data, dtype = _encode(data, gguf_type, gguf, np)
                writer.add_tensor(name, data, raw_dtype=dtype)
                num_tensors += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return {"type": gguf_type, "architecture": "llama", "num_tensors": num_tensors, "tied_embeddings": bool(config.tie_word_embeddings)}


def _permute(weights, num_heads: int):
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), as convert_hf_to_gguf.py does."""
    return weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _encode(data, gguf_type: str, gguf, np):
    """1-D tensors (norms) stay float32, as in llama.cpp's own files; matrices take the chosen type."""
    if data.ndim == 1 or gguf_type == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if gguf_type == "f16":
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = gguf.GGMLQuantizationType.BF16 if gguf_type == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, qtype), qtype


def _add_vocab(writer, tokenizer, model_dir: Path, vocab_size: int) -> None:
    """A byte-level BPE vocabulary (GPT-2 style, as SmolLM2's) with its merges, special tokens and chat template."""
    import gguf

    if not (model_dir / "tokenizer.json").is_file() or getattr(tokenizer, "is_fast", False) is False:
        raise OptimizeError(f"GGUF export needs a fast BPE tokenizer (tokenizer.json) in {model_dir}")
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in specials else gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if "smollm" in model_dir.name.lower() else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


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
