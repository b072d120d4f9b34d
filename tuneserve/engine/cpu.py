"""The CPU the engine runs on: its threads and their binding, and what it computes natively."""

import contextlib
import os
from collections.abc import Iterator


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it (AVX2-only
    x86, as on many cloud VMs) PyTorch emulates bf16: matmuls ran 8x slower than float32 here."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def compute_dtype(asked: str = "auto") -> str:
    """The dtype to run torch in here: `asked`, or for auto bfloat16 on a GPU or a CPU that computes
    it natively (AVX512-BF16, AMX), else float32."""
    import torch

    if asked != "auto":
        return asked
    return "bfloat16" if torch.cuda.is_available() or has_fast_bf16() else "float32"


def engine_dtype(dtype: str) -> str:
    """The dtype vLLM runs here: on a CPU `auto` is float32 where bf16 is emulated (measured here:
    bf16 prefill 5x slower than float32, decode steps equal; docs/performance.md), else as given."""
    return "float32" if dtype == "auto" and is_cpu_platform() and not has_fast_bf16() else dtype


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
    groups = core_groups(cores[:num_threads], num_ranks)
    return {"OMP_NUM_THREADS": str(len(groups[0])), "VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, g)) for g in groups)}


def core_groups(cores: list[int], n: int) -> list[list[int]]:
    """`cores` split into `n` equal groups of neighbours (a rank's, or a replica's); the remainder unused."""
    per_group = len(cores) // n
    if per_group == 0:
        raise ValueError(f"{n} groups need at least {n} CPU cores; {len(cores)} can be used here")
    return [cores[i * per_group:(i + 1) * per_group] for i in range(n)]


def apply_cpu_defaults(cpu_threads: int | None = None, num_ranks: int = 1) -> None:
    """Set `cpu_thread_env` in this process (vLLM's workers inherit it), unless the user set it."""
    for name, value in cpu_thread_env(cpu_threads, num_ranks).items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def no_openmp_pool() -> Iterator[None]:
    """Torch on one thread inside: work done before the engine starts leaves no OpenMP thread pool
    behind, so the engine core can still be forked (plugin change 8) instead of spawned."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
