"""What a model is, read from its files without loading weights."""

import hashlib
import json
import math
import struct
from pathlib import Path

from pydantic import BaseModel

from tuneserve.models.errors import ModelError

FINGERPRINT_SAMPLE_BYTES = 1 << 20


class ModelFacts(BaseModel):
    """The numbers `tuneserve models show` prints and later stages plan with."""

    path: str
    architecture: str
    model_type: str
    num_params: int
    num_layers: int
    hidden_size: int
    intermediate_size: int | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int | None
    dtype: str | None
    tie_word_embeddings: bool
    disk_bytes: int

    def kv_cache_bytes_per_token(self, bytes_per_value: float = 2) -> float:
        """K and V for every layer and KV head: what one token of context holds in the KV cache."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{model_dir}: no config.json (not a Hugging Face model directory)") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON ({e})") from None
    # Multimodal configs nest the language model's numbers.
    return config.get("text_config", config) | {"architectures": config.get("architectures")}


def safetensors_header(path: Path) -> tuple[bytes, dict]:
    """The raw header bytes and parsed header of a .safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        raw = f.read(size)
    try:
        return raw, json.loads(raw)
    except json.JSONDecodeError:
        raise ModelError(f"{path}: corrupt safetensors header") from None


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(Path(model_dir).glob("*.safetensors"))


def count_params(model_dir: Path) -> int:
    """Stored tensor elements (packed quantized tensors count as stored)."""
    total = 0
    for path in weight_files(model_dir):
        _, header = safetensors_header(path)
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and, per weights file, its header, size and first MiB of data.

    Cheap on multi-GB checkpoints, yet it tells apart two finetunes of one architecture.
    """
    h = hashlib.sha256((Path(model_dir) / "config.json").read_bytes())
    for path in weight_files(model_dir):
        raw, _ = safetensors_header(path)
        h.update(path.name.encode() + raw + str(path.stat().st_size).encode())
        with open(path, "rb") as f:
            f.seek(8 + len(raw))
            h.update(f.read(FINGERPRINT_SAMPLE_BYTES))
    return h.hexdigest()


def model_facts(model_dir: str | Path) -> ModelFacts:
    model_dir = Path(model_dir)
    c = read_config(model_dir)
    num_heads = c["num_attention_heads"]
    return ModelFacts(
        path=str(model_dir),
        architecture=(c.get("architectures") or ["?"])[0],
        model_type=c.get("model_type", "?"),
        num_params=count_params(model_dir),
        num_layers=c["num_hidden_layers"],
        hidden_size=c["hidden_size"],
        intermediate_size=c.get("intermediate_size"),
        num_heads=num_heads,
        num_kv_heads=c.get("num_key_value_heads") or num_heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // num_heads,
        vocab_size=c["vocab_size"],
        context_length=c.get("max_position_embeddings"),
        dtype=c.get("dtype") or c.get("torch_dtype"),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        disk_bytes=sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()),
    )
