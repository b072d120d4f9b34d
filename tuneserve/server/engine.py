"""The engine behind the server: a small interface, and the vLLM AsyncLLM that fulfils it."""

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from tuneserve.server.config import ServeConfig, parse_speculative

logger = logging.getLogger("tuneserve.server")


class Engine(Protocol):
    """What serving needs from vLLM's AsyncLLM (a FakeEngine implements it for fault tests)."""

    @property
    def errored(self) -> bool: ...

    def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    async def add_lora(self, lora_request: Any) -> bool: ...

    async def remove_lora(self, lora_id: int) -> bool: ...

    async def list_loras(self) -> set[int]: ...

    def get_num_unfinished_requests(self) -> int: ...

    def shutdown(self) -> None: ...


def speculative_config(config: ServeConfig) -> dict | None:
    if config.speculative is None:
        return None
    from tuneserve.models import resolve_model

    method, draft_ref, num_tokens = parse_speculative(config.speculative)
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": num_tokens, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    return {"method": "draft_model", "model": str(resolve_model(draft_ref)), "num_speculative_tokens": num_tokens}


def kv_cache_bytes(config: ServeConfig, model_dir: Path, is_cpu: bool) -> int | None:
    """Always explicit on CPU (see memory.py); on GPU only when --kv-cache-gib is given."""
    if not is_cpu:
        return int(config.kv_cache_gib * (1 << 30)) if config.kv_cache_gib else None
    from tuneserve.server.memory import plan_kv_cache

    plan = plan_kv_cache(model_dir, config.dtype, config.max_model_len, config.kv_cache_gib, parallelism=parallelism(config))
    logger.info("%s", plan.describe())
    return plan.kv_cache_bytes


def parallelism(config: ServeConfig):
    from tuneserve.server.memory import Parallelism

    return Parallelism(config.tensor_parallel_size, config.pipeline_parallel_size, config.data_parallel_size)


def engine_kwargs(config: ServeConfig, model_dir: Path, is_cpu: bool) -> dict:
    """AsyncEngineArgs fields from the serve config (model and CPU defaults come from start_engine)."""
    extra = {} if config.gpu_memory_utilization is None else {"gpu_memory_utilization": config.gpu_memory_utilization}
    return dict(
        served_model_name=config.model_names,
        max_model_len=config.max_model_len,
        dtype=config.dtype,
        kv_cache_memory_bytes=kv_cache_bytes(config, model_dir, is_cpu),
        max_num_seqs=config.max_num_seqs,
        enforce_eager=config.enforce_eager,
        enable_prefix_caching=config.prefix_caching,
        seed=config.seed,
        enable_lora=config.is_lora_enabled,
        max_loras=config.max_loras,
        max_lora_rank=config.max_lora_rank,
        max_cpu_loras=config.max_cpu_loras,
        speculative_config=speculative_config(config),
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        data_parallel_size=config.data_parallel_size,
        distributed_executor_backend=config.distributed_executor_backend,
        disable_log_stats=False,  # keeps vLLM's Prometheus gauges live for /metrics
        enable_log_requests=False,
        **extra,
    )


def use_lora_kernels(choice: str) -> None:
    """Tell tuneserve's vLLM plugin, in the engine processes about to start, which LoRA ops to use."""
    from tuneserve.models.vllm_lora import ENV
    from tuneserve.models.vllm_plugin import plugin_active

    os.environ[ENV] = choice
    if choice == "tuneserve" and not plugin_active():
        logger.warning("multi-LoRA ops: vLLM's own (tuneserve's vLLM plugin is not active for this vLLM version)")
    else:
        logger.info("multi-LoRA ops: %s", "tuneserve's grouped GEMMs" if choice == "tuneserve" else "vLLM's own")


def build_engine(config: ServeConfig, model_dir: Path):
    """The server's AsyncLLM, after the platform checks."""
    from tuneserve.models.engine import is_cpu_platform, start_engine
    from tuneserve.server.startup import check_parallelism, check_platform_options

    is_cpu = is_cpu_platform()
    check_platform_options(config, is_cpu)
    check_parallelism(config, model_dir, is_cpu)
    if is_cpu and config.is_lora_enabled:
        use_lora_kernels(config.lora_kernels)
    return start_engine(model_dir, config.cpu_threads, **engine_kwargs(config, model_dir, is_cpu))
