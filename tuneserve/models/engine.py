"""Starting vLLM's engine, shared by every stage that runs the model (serve, evals, distill, bench).

The server builds its engine arguments from its config and calls `start_engine`; evaluation
calls it with a small fixed context. Both get the same CPU thread defaults and eager mode.
"""

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger("tuneserve.engine")


def tokens_prompt(token_ids: list[int], cache_salt: str | None = None) -> Any:
    """Engine input for already-tokenized prompts (`cache_salt` keeps its prefix cache apart)."""
    try:
        from vllm.inputs import tokens_input
    except ImportError:  # vLLM releases before the renderer refactor take the TypedDict
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=token_ids, **({"cache_salt": cache_salt} if cache_salt else {}))
    return tokens_input(token_ids, cache_salt=cache_salt)


def chat_prompt_ids(
    tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True, add_special_tokens: bool = False, **template_kwargs: Any
) -> list[int]:
    """The chat template applied and tokenized as the engine sees it (no second BOS).

    `template_kwargs` go to apply_chat_template: `tools`, `chat_template`, `continue_final_message`, ...
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs)
    return tokenizer(text, add_special_tokens=add_special_tokens).input_ids


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it (AVX2-only
    x86, as on many cloud VMs) PyTorch emulates bf16: matmuls ran 8x slower than float32 here."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_thread_env(cpu_threads: int | None = None, num_ranks: int = 1) -> dict[str, str]:
    """OpenMP settings for vLLM's CPU workers: `cpu_threads` (default every usable core), bound,
    split into one group of cores per rank (vLLM's "0-3|4-7" form) when the engine has several.

    vLLM drops its CPU worker to one torch thread unless OMP_NUM_THREADS is set. Measured on a
    2-core box (32 parallel chats, eager): 277-297 tok/s with vLLM's default vs 321-417 tok/s
    with OMP_NUM_THREADS=2 VLLM_CPU_OMP_THREADS_BIND=0-1 (examples/bench/cpu.yaml re-measures it).
    """
    cores = sorted(os.sched_getaffinity(0))
    num_threads = min(cpu_threads or len(cores), len(cores))
    if num_ranks > num_threads:
        raise ValueError(
            f"{num_ranks} engine ranks need at least {num_ranks} CPU cores; {num_threads} can be used here "
            "(lower --tensor-parallel-size / --pipeline-parallel-size / --data-parallel-size, or raise --cpu-threads)"
        )
    per_rank = num_threads // num_ranks
    groups = [cores[i * per_rank:(i + 1) * per_rank] for i in range(num_ranks)]
    return {"OMP_NUM_THREADS": str(per_rank), "VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, g)) for g in groups)}


def apply_cpu_defaults(cpu_threads: int | None = None, num_ranks: int = 1) -> None:
    """Set `cpu_thread_env` in this process (vLLM's workers inherit it), unless the user set it."""
    for name, value in cpu_thread_env(cpu_threads, num_ranks).items():
        os.environ.setdefault(name, value)


def start_engine(model_dir: Path, cpu_threads: int | None = None, **engine_kwargs: Any):
    """vLLM's AsyncLLM for `model_dir` in this process (its engine core runs in a child process).

    `engine_kwargs` are AsyncEngineArgs fields; on CPU the default is eager mode (compiled CPU
    graphs were slower to start and not more accurate) and the thread defaults above.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    is_cpu = is_cpu_platform()
    if is_cpu:
        num_ranks = 1
        for size in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            num_ranks *= engine_kwargs.get(size) or 1
        apply_cpu_defaults(cpu_threads, num_ranks)
    if engine_kwargs.get("enforce_eager") is None:
        engine_kwargs["enforce_eager"] = is_cpu
    args = AsyncEngineArgs(model=str(model_dir), **engine_kwargs)
    logger.info("starting vLLM engine for %s (enforce_eager=%s)", model_dir, args.enforce_eager)
    return AsyncLLM.from_engine_args(args)


def start_eval_engine(model_dir: Path):
    """A small engine for scoring: 1,024-token context, 1 GiB of KV cache, no request logging."""
    return start_engine(model_dir, max_model_len=1024, kv_cache_memory_bytes=1 << 30, enable_log_requests=False)
