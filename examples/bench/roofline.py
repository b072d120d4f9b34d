"""The bandwidth roofline of one decode step: a step reads every weight once, so no engine decodes
a stream faster than weight bytes / memory bandwidth. Printed for the weights `make bench-engines`
serves (bf16 and q8_0 GGUF, and vLLM's own: float32 on a CPU without native bf16, else bf16), with this
machine's copy bandwidth measured now.

    .venv/bin/python examples/bench/roofline.py [runs/smollm2-gguf-bf16 runs/smollm2-gguf-q8_0 ...]
"""

import sys
from pathlib import Path

from tuneserve.bench.environment import copy_bandwidth_gbps, describe, environment
from tuneserve.engine import engine_dtype
from tuneserve.models import model_facts, resolve_model

DEFAULT_GGUFS = ["runs/smollm2-gguf-bf16", "runs/smollm2-gguf-q8_0"]


def main(exports: list[str]) -> None:
    bandwidth = copy_bandwidth_gbps()
    dtype = "float32" if engine_dtype("auto") == "float32" else "bf16"  # as vLLM runs the model on this CPU
    weights = {f"{dtype} (vLLM's dtype here)": model_facts(resolve_model("smollm2-135m-instruct")).num_params * (4 if dtype == "float32" else 2)}
    for export in exports:
        weights[f"{Path(export).name} GGUF"] = (Path(export) / "model.gguf").stat().st_size
    print(f"{describe(environment())}; measured now: {bandwidth} GB/s\n")
    print("| weights | bytes a token | roofline ms/token | roofline tok/s |\n|---|---|---|---|")
    for name, num_bytes in weights.items():
        ms = num_bytes / (bandwidth * 1e9) * 1e3
        print(f"| {name} | {num_bytes / 1e6:.0f} MB | {ms:.1f} | {1e3 / ms:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_GGUFS)
