"""A Hugging Face Llama-architecture checkpoint written as GGUF, llama.cpp's format: what
`tuneserve optimize export` ships and what `tuneserve serve --engine llamacpp` serves.

Written with the `gguf` package (llama.cpp's own Python writer): its tensor-name map, its
quantizers (Q8_0) and its SpecialVocab (merges, special tokens, chat template), so nothing about
the format is written by hand here. Llama-architecture models (SmolLM2, Llama, Mistral-style)
are supported; q/k projections are permuted as llama.cpp's converter does.
"""

from pathlib import Path
from typing import Literal

from tuneserve.models.errors import ModelError
from tuneserve.models.facts import weight_files

GgufType = Literal["f32", "f16", "bf16", "q8_0"]


def write_gguf(model_dir: Path, path: Path, gguf_type: GgufType) -> dict:
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer


    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in ("llama", "mistral"):
        raise ModelError(f"GGUF export supports Llama-architecture models (llama, mistral); {model_dir} is {config.model_type}")
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
                    raise ModelError(f"GGUF export: no GGUF name for tensor {hf_name}")
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
        raise ModelError(f"GGUF export needs a fast BPE tokenizer (tokenizer.json) in {model_dir}")
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
