"""Everything about vLLM the stages share: engine launch, the CPU it runs on, the KV-cache plan and
parallelism, the start-up checks that concern the engine, and what tuneserve installs into vLLM
through its `vllm.general_plugins` entry point (plugin.py: fixes, the grouped LoRA ops of
lora_ops.py and lora_kernels.py, which load torch and vLLM and are imported only by the plugin)."""

from tuneserve.engine.checks import check_parallelism, check_platform_options
from tuneserve.engine.cpu import (
    apply_cpu_defaults,
    compute_dtype,
    core_groups,
    cpu_thread_env,
    engine_dtype,
    has_fast_bf16,
    is_cpu_platform,
    no_openmp_pool,
)
from tuneserve.engine.interface import Engine
from tuneserve.engine.launch import chat_prompt_ids, start_engine, start_eval_engine, tokens_prompt
from tuneserve.engine.memory import KVCachePlan, LoraPlan, Parallelism, plan_kv_cache, plan_loras
from tuneserve.engine.plugin import choose_lora_kernels

__all__ = [
    "Engine", "KVCachePlan", "LoraPlan", "Parallelism", "plan_loras", "apply_cpu_defaults", "chat_prompt_ids", "check_parallelism",
    "check_platform_options", "choose_lora_kernels", "compute_dtype", "core_groups", "cpu_thread_env", "engine_dtype", "has_fast_bf16", "is_cpu_platform",
    "no_openmp_pool", "plan_kv_cache", "start_engine", "start_eval_engine", "tokens_prompt",
]
