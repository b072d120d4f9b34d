"""The server's engine: vLLM's AsyncLLM built from the serve config (the engine package does the rest)."""

import logging
from pathlib import Path

from tuneserve.engine import (
    LoraPlan,
    Parallelism,
    check_parallelism,
    check_platform_options,
    choose_lora_kernels,
    is_cpu_platform,
    plan_kv_cache,
    start_engine,
)
from tuneserve.models import model_facts, resolve_model
from tuneserve.server.config import ServeConfig, parse_speculative

logger = logging.getLogger("tuneserve.server")


def served_model_dir(config: ServeConfig) -> Path:
    """The model's Hugging Face directory (tokenizer, chat template, facts): a `tuneserve optimize
    export` directory served by llama.cpp has the one it was exported from."""
    if config.engine == "llamacpp":
        from tuneserve.engine.llamacpp import tokenizer_dir_of

        exported_from = tokenizer_dir_of(config.model)
        if exported_from is not None:
            return exported_from
    return resolve_model(config.model)


def engine_limits(engine) -> tuple[int, int]:
    """(context length, sequences per step) the engine was started with."""
    if hasattr(engine, "vllm_config"):
        return engine.model_config.max_model_len, engine.vllm_config.scheduler_config.max_num_seqs
    return engine.max_model_len, engine.max_num_seqs


def speculative_config(config: ServeConfig) -> dict | None:
    if config.speculative is None:
        return None
    method, draft_ref, num_tokens = parse_speculative(config.speculative)
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": num_tokens, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    return {"method": "draft_model", "model": str(resolve_model(draft_ref)), "num_speculative_tokens": num_tokens}


def kv_cache_bytes(config: ServeConfig, model_dir: Path, is_cpu: bool) -> int | None:
    """Always explicit on CPU (engine/memory.py); on GPU only when --kv-cache-gib is given."""
    if not is_cpu:
        return int(config.kv_cache_gib * (1 << 30)) if config.kv_cache_gib else None
    plan = plan_kv_cache(model_dir, config.dtype, config.max_model_len, config.kv_cache_gib, parallelism=parallelism(config))
    logger.info("%s", plan.describe())
    return plan.kv_cache_bytes


def parallelism(config: ServeConfig) -> Parallelism:
    return Parallelism(config.tensor_parallel_size, config.pipeline_parallel_size, config.data_parallel_size)


def engine_kwargs(config: ServeConfig, model_dir: Path, is_cpu: bool, lora_plan: LoraPlan | None = None) -> dict:
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
        max_loras=lora_plan.max_loras if lora_plan else config.max_loras,
        max_lora_rank=config.max_lora_rank,
        max_cpu_loras=lora_plan.max_cpu_loras if lora_plan else config.max_cpu_loras,
        speculative_config=speculative_config(config),
        kv_events_config=None if config.kv_events_endpoint is None else {
            "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": config.kv_events_endpoint},
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        data_parallel_size=config.data_parallel_size,
        distributed_executor_backend=config.distributed_executor_backend,
        disable_log_stats=False,  # keeps vLLM's Prometheus gauges live for /metrics
        enable_log_requests=False,
        **extra,
    )


def build_engine(config: ServeConfig, model_dir: Path, lora_plan: LoraPlan | None = None):
    """The server's engine: vLLM's AsyncLLM after the platform checks, or llama.cpp (--engine llamacpp)."""
    if config.engine == "llamacpp":
        from tuneserve.engine.llamacpp import gguf_of, start_llamacpp

        max_model_len = config.max_model_len or model_facts(model_dir).context_length or 2048
        return start_llamacpp(gguf_of(config.model, model_dir, config.gguf_type), max_model_len, config.max_num_seqs,
                              config.cpu_threads, verbose=config.log_level == "debug")
    is_cpu = is_cpu_platform()
    check_platform_options(config, is_cpu)
    check_parallelism(config, model_dir, is_cpu)
    if is_cpu and config.is_lora_enabled:
        choose_lora_kernels(config.lora_kernels)
    if lora_plan is not None:
        logger.info("%s", lora_plan.describe())
    return start_engine(model_dir, config.cpu_threads, **engine_kwargs(config, model_dir, is_cpu, lora_plan))
