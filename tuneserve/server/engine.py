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


def tokens_prompt(token_ids: list[int]) -> Any:
    """Engine input for already-tokenized prompts (the server tokenizes to check lengths)."""
    try:
        from vllm.inputs import tokens_input
    except ImportError:  # vLLM releases before the renderer refactor take the TypedDict
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=token_ids)
    return tokens_input(token_ids)


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def apply_cpu_defaults(config: ServeConfig) -> None:
    """Give the engine every core we may use, unless the user set the variables themselves.

    vLLM drops its CPU worker to one torch thread unless OMP_NUM_THREADS is set. Measured on a
    2-core box (32 parallel chats, eager): 277-297 tok/s with vLLM's default vs 321-417 tok/s
    with OMP_NUM_THREADS=2 VLLM_CPU_OMP_THREADS_BIND=0-1. `tuneserve bench` re-checks this.
    """
    cores = sorted(os.sched_getaffinity(0))
    num_threads = min(config.cpu_threads or len(cores), len(cores))
    os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores[:num_threads])))


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

    plan = plan_kv_cache(model_dir, config.dtype, config.max_model_len, config.kv_cache_gib)
    logger.info("%s", plan.describe())
    return plan.kv_cache_bytes


def engine_args(config: ServeConfig, model_dir: Path, is_cpu: bool):
    from vllm.engine.arg_utils import AsyncEngineArgs

    enforce_eager = is_cpu if config.enforce_eager is None else config.enforce_eager
    extra = {} if config.gpu_memory_utilization is None else {"gpu_memory_utilization": config.gpu_memory_utilization}
    return AsyncEngineArgs(
        model=str(model_dir),
        served_model_name=config.model_names,
        max_model_len=config.max_model_len,
        dtype=config.dtype,
        kv_cache_memory_bytes=kv_cache_bytes(config, model_dir, is_cpu),
        max_num_seqs=config.max_num_seqs,
        enforce_eager=enforce_eager,
        enable_prefix_caching=config.prefix_caching,
        seed=config.seed,
        enable_lora=config.is_lora_enabled,
        max_loras=config.max_loras,
        max_lora_rank=config.max_lora_rank,
        max_cpu_loras=config.max_cpu_loras,
        speculative_config=speculative_config(config),
        disable_log_stats=False,  # keeps vLLM's Prometheus gauges live for /metrics
        enable_log_requests=False,
        **extra,
    )


def build_engine(config: ServeConfig, model_dir: Path):
    """Start vLLM's AsyncLLM in this process (its engine core runs in a child process)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    from tuneserve.server.startup import check_platform_options

    is_cpu = is_cpu_platform()
    check_platform_options(config, is_cpu)
    if is_cpu:
        apply_cpu_defaults(config)
    args = engine_args(config, model_dir, is_cpu)
    logger.info("starting vLLM engine for %s (enforce_eager=%s)", model_dir, args.enforce_eager)
    return AsyncLLM.from_engine_args(args)
