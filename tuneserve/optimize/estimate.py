"""Memory estimates: weights by the usual rule of thumb, plus the KV cache; optionally measured.

Weights: M = P x 4 bytes / (32 / Q) x 1.2  (P parameters, Q bits; 1.2 for runtime overhead).
KV cache: 2 (K and V) x layers x KV heads x head dim x bytes per value x tokens (context x batch).

The rule of thumb quantizes every parameter. Quantizers (bitsandbytes, llm-compressor) keep the
token embeddings (and an untied lm_head) at 16 bits, which on a small model with a large
vocabulary is a big share: SmolLM2-135M's 49152 x 576 embedding is 21% of its parameters, so at
4 bits its real weights exceed the rule's figure, overhead included. `layered_gib` counts that:
embeddings at max(Q, 16) bits, everything else at Q bits, no overhead.

Per device, with vLLM's parallelism: tensor parallelism (TP) shards every layer's weights and
its attention heads, pipeline parallelism (PP) splits the layers, so each of the TP x PP devices
holds about 1/(TP x PP) of the weights. Its KV cache is 1/PP of the layers times the KV heads it
holds: KV heads / TP, or one replicated head when TP exceeds the KV heads.
"""

import gc
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneserve.engine import Parallelism
from tuneserve.models import model_facts, resolve_model
from tuneserve.models.facts import ModelFacts
from tuneserve.optimize.options import EstimateOptions

OVERHEAD = 1.2
GIB = 1 << 30


@dataclass
class MemoryEstimate:
    bits: int
    weights_gib: float
    kv_cache_gib: float
    total_gib: float
    layered_gib: float
    measured_weights_gib: float | None = None
    num_devices: int = 1
    per_device_gib: float | None = None  # weights + KV cache on each of the TP x PP devices

    def as_dict(self) -> dict:
        return asdict(self)


def weights_bytes(num_params: int, bits: int) -> float:
    return num_params * 4 / (32 / bits) * OVERHEAD


def layered_weights_bytes(facts: ModelFacts, bits: int) -> float:
    embedding = facts.vocab_size * facts.hidden_size * (1 if facts.tie_word_embeddings else 2)
    return embedding * max(bits, 16) / 8 + (facts.num_params - embedding) * bits / 8


def kv_cache_bytes(facts: ModelFacts, context: int, batch: int, kv_bits: int = 16) -> float:
    return facts.kv_cache_bytes_per_token(kv_bits / 8) * context * batch


def estimate(facts: ModelFacts, bits: int, context: int, batch: int, parallelism: Parallelism | None = None) -> MemoryEstimate:
    """KV cache at 16 bits whatever the weight bits (vLLM's default cache dtype); each device's share
    as the engine divides it (engine.Parallelism)."""
    parallelism = parallelism or Parallelism()
    weights = weights_bytes(facts.num_params, bits) / GIB
    kv = kv_cache_bytes(facts, context, batch) / GIB
    layered = layered_weights_bytes(facts, bits) / GIB
    num_devices = parallelism.num_shards
    per_device = weights / num_devices + kv * parallelism.kv_share(facts)
    return MemoryEstimate(bits, round(weights, 4), round(kv, 4), round(weights + kv, 4), round(layered, 4),
                          num_devices=num_devices, per_device_gib=round(per_device, 4))


def measure_weights_gib(model_dir: Path, bits: int) -> float:
    """Bytes the loaded model's parameters and buffers occupy at `bits` (bitsandbytes for 8/4)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32 if bits == 32 else torch.bfloat16}
    if bits == 8:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif bits == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    num_bytes = model.get_memory_footprint()
    del model
    gc.collect()
    return round(num_bytes / GIB, 4)


def run_estimate(options: EstimateOptions) -> list[MemoryEstimate]:
    """`tuneserve optimize estimate`: one row per bit width, measured too with `measure`."""
    o = options
    model_dir = resolve_model(o.model)
    facts = model_facts(model_dir)
    rows = []
    for b in o.bits:
        row = estimate(facts, b, o.context, o.batch, Parallelism(o.tensor_parallel_size, o.pipeline_parallel_size))
        if o.measure:
            row.measured_weights_gib = measure_weights_gib(model_dir, b)
        rows.append(row)
    return rows
