"""Starting vLLM's engine, shared by every stage that runs the model (serve, evals, distill, bench),
and the engine's inputs (token prompts, chat prompts as the engine sees them).

The server builds its engine arguments from its config and calls `start_engine`; evaluation
calls it with a small fixed context. Both get the same CPU thread defaults and eager mode.
"""

import logging
import os
from pathlib import Path
from typing import Any

from tuneserve.engine.checks import check_kernels
from tuneserve.engine.cpu import apply_cpu_defaults, engine_dtype, is_cpu_platform
from tuneserve.engine.plugin import START_METHOD_ENV

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


def start_engine(model_dir: Path, cpu_threads: int | None = None, **engine_kwargs: Any):
    """vLLM's AsyncLLM for `model_dir` in this process (its engine core runs in a child process).

    `engine_kwargs` are AsyncEngineArgs fields; on CPU the defaults are eager mode (compiled CPU
    graphs were slower to start and not more accurate), the thread defaults above, float32
    where the CPU has no native bf16 (`engine_dtype`); with one rank the model runs inside the
    engine core (`uni`, kept on CPU by the plugin's change 6).
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    is_cpu = is_cpu_platform()
    if is_cpu:
        check_kernels(model_dir)
        num_ranks = 1
        for size in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            num_ranks *= engine_kwargs.get(size) or 1
        apply_cpu_defaults(cpu_threads, num_ranks)
        engine_kwargs["dtype"] = engine_dtype(engine_kwargs.get("dtype") or "auto")
    if engine_kwargs.get("enforce_eager") is None:
        engine_kwargs["enforce_eager"] = is_cpu
    if isinstance(engine_kwargs.get("kv_events_config"), dict):
        from vllm.config import KVEventsConfig

        engine_kwargs["kv_events_config"] = KVEventsConfig(**engine_kwargs["kv_events_config"])
    args = AsyncEngineArgs(model=str(model_dir), **engine_kwargs)
    logger.info("starting vLLM engine for %s (enforce_eager=%s)", model_dir, args.enforce_eager)
    asked = os.environ.get(START_METHOD_ENV)
    try:
        return AsyncLLM.from_engine_args(args)
    finally:  # vLLM's CPU platform (and plugin change 8) set it for this launch: later children choose their own
        if asked is None:
            os.environ.pop(START_METHOD_ENV, None)
        else:
            os.environ[START_METHOD_ENV] = asked


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA kernels are built for


def lora_rank_for(rank: int) -> int:
    """The smallest engine max_lora_rank that holds an adapter of this rank."""
    return next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1])


def start_eval_engine(model_dir: Path, adapter_rank: int | None = None):
    """A small engine for scoring: 1,024-token context, 1 GiB of KV cache, no request logging; with
    `adapter_rank`, LoRA on for one adapter of that rank (served as the server serves it)."""
    lora = {} if adapter_rank is None else {"enable_lora": True, "max_loras": 1, "max_lora_rank": lora_rank_for(adapter_rank)}
    return start_engine(model_dir, max_model_len=1024, kv_cache_memory_bytes=1 << 30, enable_log_requests=False, **lora)
