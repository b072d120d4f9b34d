"""Micro-benchmark of the multi-LoRA ops on the default model's layer shapes: vLLM's CPU ops, and
tuneserve's "stacked" and "grouped" strategies, side by side in one run (medians of repeats).

It is what set `STACKED_MAX_COLUMNS` in tuneserve/engine/lora_kernels.py: how many adapter
columns a layer may have before grouped beats stacked. The layer is SmolLM2-135M's qkv projection
(576 -> 576 + 192 + 192) with rank-8 adapters of q_proj and v_proj (the committed examples)
padded to the engine's max rank 16, as vLLM holds them; the base GEMM is shown for scale.

    .venv/bin/python examples/bench/lora_kernels.py [--rows 8 32 128 256 512 2048]
"""

import argparse
import statistics
import time
from functools import partial

import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

import tuneserve.engine.lora_kernels as kernels
from tuneserve.engine.lora_ops import GroupedPunicaWrapperCPU

HIDDEN, SLICES, RANK, MAX_RANK, SLOTS = 576, (576, 192, 192), 8, 16, 4


def timed(fn, repeats: int = 7) -> float:
    """Median microseconds per call over `repeats` batches."""
    fn()
    calls = 1
    while True:  # size a batch to ~20 ms
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start > 0.02:
            break
        calls *= 2
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def weights():
    torch.manual_seed(0)
    a = tuple(torch.zeros(SLOTS, 1, MAX_RANK, HIDDEN, dtype=torch.bfloat16) for _ in SLICES)
    b = tuple(torch.zeros(SLOTS, 1, size, MAX_RANK, dtype=torch.bfloat16) for size in SLICES)
    for i in (0, 2):  # q and v
        a[i][:, :, :RANK] = torch.randn(SLOTS, 1, RANK, HIDDEN) / 10
        b[i][:, :, :, :RANK] = torch.randn(SLOTS, 1, SLICES[i], RANK) / 10
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32, 128, 256, 512, 2048])
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(2)
    a, b = weights()
    base_w = torch.randn(sum(SLICES), HIDDEN, dtype=torch.bfloat16)
    print(f"qkv projection {HIDDEN} -> {'+'.join(map(str, SLICES))}, rank {RANK} of {MAX_RANK}, bf16, "
          f"{torch.get_num_threads()} threads; microseconds, median of 7")
    print("| rows | adapters | base GEMM | vLLM ops | stacked | grouped | chosen | vLLM / chosen |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        x = torch.randn(rows, HIDDEN, dtype=torch.bfloat16)
        y = torch.zeros(rows, sum(SLICES), dtype=torch.bfloat16)
        base = timed(partial(torch.matmul, x, base_w.t()))
        for k in args.adapters:
            ids = [1 + (i % k) for i in range(rows)]  # decode-like interleaving: the hardest mix
            mapping = LoRAMapping(ids, ids, is_prefill=False)
            wrappers = []
            for cls in (PunicaWrapperCPU, GroupedPunicaWrapperCPU):
                w = cls(max(rows, 256), 256, "cpu")
                w.update_metadata(mapping, [1, 2, 3, 4], SLOTS, 1000)
                wrappers.append(w)
            vllm_ops, ours = wrappers
            vllm_us = timed(partial(vllm_ops.add_lora_linear, y, x, a, b, 1.0, SLICES))
            measured = {}
            for strategy, threshold in (("stacked", 1 << 62), ("grouped", 0)):
                kernels.STACKED_MAX_COLUMNS = threshold
                measured[strategy] = timed(partial(ours.add_lora_linear, y, x, a, b, 1.0, SLICES))
            kernels.STACKED_MAX_COLUMNS = DEFAULT_THRESHOLD
            chosen = "stacked" if kernels.stacks(SLOTS, 2 * RANK) else "grouped"
            print(f"| {rows} | {k} | {base:.0f} | {vllm_us:.0f} | {measured['stacked']:.0f} | {measured['grouped']:.0f} "
                  f"| {chosen} | {vllm_us / measured[chosen]:.1f}x |", flush=True)


DEFAULT_THRESHOLD = kernels.STACKED_MAX_COLUMNS

if __name__ == "__main__":
    main()
