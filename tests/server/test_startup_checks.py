"""Start-up checks that need no engine: KV-cache sizing and the exposed-host warning."""

import logging
import os

import pytest

from tuneserve.engine.memory import GIB, MAX_DEFAULT_KV_CACHE_GIB, RUNTIME_OVERHEAD_GIB, plan_kv_cache, plan_loras
from tuneserve.models import resolve_model
from tuneserve.server.startup import StartupError, warn_if_exposed


@pytest.fixture(scope="module")
def model_dir():
    return resolve_model(None)


def test_plenty_of_memory_gives_the_capped_default(model_dir):
    plan = plan_kv_cache(model_dir, "bfloat16", None, None, available_bytes=64 * GIB)
    assert plan.kv_cache_bytes == MAX_DEFAULT_KV_CACHE_GIB * GIB and plan.is_default
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x K and V x 2 bytes = 23,040 bytes a token
    assert plan.num_tokens == int(plan.kv_cache_bytes // 23_040)


def test_lora_slots_default_to_16_and_shrink_when_memory_is_short():
    """16 engine slots (100 adapters over 16 streams ran at 0.73x of base with 16, 0.59x with vLLM's
    usual 4); on a small machine only as many as fit in 5% of its memory; given values are kept."""
    shapes = {f"layers.{i}.q_proj": [576, 576] for i in range(30)}  # 1.05 MiB an adapter at rank 16, 2.1 in float32
    plenty = plan_loras(shapes, 16, None, None, available_bytes=16 * GIB)
    assert (plenty.max_loras, plenty.max_cpu_loras) == (16, 32)
    short = plan_loras(shapes, 16, None, None, available_bytes=128 << 20)  # 6.4 MiB for slots, 6.4 for the cache
    assert (short.max_loras, short.max_cpu_loras) == (3, 6)
    given = plan_loras(shapes, 16, 3, 4, available_bytes=128 << 20)
    assert (given.max_loras, given.max_cpu_loras) == (3, 4)
    kept = plan_loras(shapes, 16, None, 5, available_bytes=16 * GIB)  # --max-cpu-loras 5 alone: the engine keeps 5
    assert (kept.max_loras, kept.max_cpu_loras) == (5, 5)


def test_busy_machine_gets_half_of_what_is_left(model_dir):
    plan = plan_kv_cache(model_dir, "bfloat16", None, None, available_bytes=4 * GIB)
    headroom = 4 * GIB - plan.weights_bytes - RUNTIME_OVERHEAD_GIB * GIB
    assert abs(plan.kv_cache_bytes - headroom / 2) < (1 << 20)
    float32 = plan_kv_cache(model_dir, "float32", None, None, available_bytes=64 * GIB)
    bf16 = plan_kv_cache(model_dir, "bfloat16", None, None, available_bytes=64 * GIB)
    assert float32.num_tokens == bf16.num_tokens // 2 and float32.weights_bytes == 2 * bf16.weights_bytes  # 4 bytes a value


def test_auto_plans_for_the_dtype_the_engine_runs(model_dir):
    """auto is float32 on a CPU without native bf16 (emulated bf16 prefill is 5x slower), and the
    plan counts float32's weights and KV cache, with a way out when they do not fit."""
    from tuneserve.engine import engine_dtype, has_fast_bf16

    assert engine_dtype("auto") == ("auto" if has_fast_bf16() else "float32")
    assert engine_dtype("bfloat16") == "bfloat16"
    auto = plan_kv_cache(model_dir, "auto", None, None, available_bytes=64 * GIB)
    assert auto == plan_kv_cache(model_dir, "bfloat16" if has_fast_bf16() else "float32", None, None, available_bytes=64 * GIB)
    if not has_fast_bf16():
        with pytest.raises(StartupError, match=r"or --dtype bfloat16"):
            plan_kv_cache(model_dir, "auto", None, None, available_bytes=int(1.8 * GIB))


def test_too_little_memory_names_the_fix(model_dir):
    with pytest.raises(StartupError, match="not enough memory.*lower --max-model-len"):
        plan_kv_cache(model_dir, "bfloat16", None, None, available_bytes=int(1.5 * GIB))
    with pytest.raises(StartupError, match="lower --kv-cache-gib"):
        plan_kv_cache(model_dir, "bfloat16", None, 8.0, available_bytes=4 * GIB)
    # a shorter context still fits where the model's full 8192 tokens would not
    assert plan_kv_cache(model_dir, "bfloat16", 512, None, available_bytes=int(1.8 * GIB)).num_tokens >= 512


@pytest.mark.parametrize("host,warns", [("0.0.0.0", True), ("10.1.2.3", True), ("127.0.0.1", False), ("::1", False), ("localhost", False)])
def test_binding_beyond_loopback_without_keys_warns(caplog, host, warns):
    with caplog.at_level(logging.WARNING, logger="tuneserve.server"):
        warn_if_exposed(host, has_keys=False)
        warn_if_exposed(host, has_keys=True)
    assert len(caplog.records) == (1 if warns else 0)


def test_parallel_ranks_split_the_kv_cache_memory(model_dir):
    from tuneserve.engine import Parallelism

    one = plan_kv_cache(model_dir, "bfloat16", None, None, available_bytes=64 * GIB)
    pp2 = plan_kv_cache(model_dir, "bfloat16", None, None, available_bytes=64 * GIB, parallelism=Parallelism(pipeline=2))
    assert pp2.kv_cache_bytes == one.kv_cache_bytes // 2  # per rank: the 4 GiB cap is a total
    assert pp2.num_tokens == one.num_tokens  # each rank holds half of every token
    dp2 = plan_kv_cache(model_dir, "bfloat16", None, None, available_bytes=64 * GIB, parallelism=Parallelism(data=2))
    assert dp2.num_tokens == one.num_tokens // 2 and dp2.weights_bytes == 2 * one.weights_bytes  # each replica is whole
    assert "per rank x 2 ranks" in pp2.describe()
    with pytest.raises(StartupError, match="x 2 ranks plus the weights"):
        plan_kv_cache(model_dir, "bfloat16", None, 3.0, available_bytes=6 * GIB, parallelism=Parallelism(tensor=2))


@pytest.mark.parametrize("flags, message", [
    ({"tensor_parallel_size": 2}, "the model has 9 attention heads, which 2 ranks cannot share evenly"),
    ({"pipeline_parallel_size": 31}, "the model has only 30 layers"),
    ({"pipeline_parallel_size": 2, "data_parallel_size": 2}, "4 engine ranks need at least 4 CPU cores"),
])
def test_parallel_sizes_the_model_or_machine_cannot_take_fail_before_the_engine_starts(model_dir, flags, message):
    from tuneserve.engine import check_parallelism
    from tuneserve.server.config import ServeConfig

    config = ServeConfig(cpu_threads=2, **flags)
    with pytest.raises(StartupError, match=message):
        check_parallelism(config, model_dir, is_cpu=True)
    check_parallelism(ServeConfig(pipeline_parallel_size=2, cpu_threads=2), model_dir, is_cpu=True)  # fits


def test_cpu_ranks_get_their_own_cores():
    from tuneserve.engine import cpu_thread_env

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    cores = sorted(os.sched_getaffinity(0))
    env = cpu_thread_env(2, num_ranks=2)
    assert env == {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}|{cores[1]}"}
    assert cpu_thread_env(2) == {"OMP_NUM_THREADS": "2", "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]},{cores[1]}"}
