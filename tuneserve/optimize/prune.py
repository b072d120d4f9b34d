"""SparseGPT pruning with llm-compressor (2:4 or unstructured), optionally then quantized.

The pruned weights are zeros in an ordinary checkpoint: compressed-tensors 0.19 no longer writes
sparse formats, and vLLM has no sparse kernel on CPU, so a pruned bf16 model is served dense
(same size on disk, same speed). What pruning buys here is what the zeros would be worth to a
sparse format or kernel, reported as the bytes a bitmask layout (non-zero values + one bit per
weight) would take, and the quality it costs, measured like quantization's. Combined with
W4A16 or W8A8 the file shrinks like a quantized one, and the zeros survive the quantization.
"""

import re
from pathlib import Path

from tuneserve.artifacts import Manifest, atomic_artifact, write_manifest
from tuneserve.models.identity import base_identity
from tuneserve.optimize.errors import OptimizeError
from tuneserve.optimize.options import PruneOptions
from tuneserve.optimize.quantize import _quality_and_size, prepare_compression, run_worker

PRUNED_LAYERS = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.weight(_packed)?$")


def run_prune(options: PruneOptions) -> Path:
    """`tuneserve optimize prune`: prune (then quantize), measure the zeros written, evaluate, write the artifact."""
    o = options
    fraction = o.target_sparsity
    model_dir, group_size, texts, python = prepare_compression(o, o.quantize)
    with atomic_artifact(o.out, overwrite=o.overwrite) as tmp:
        run_worker(python, model_dir, tmp, o.quantize or "none", texts, group_size,
                   "--prune-sparsity", str(fraction), "--prune-mask", o.mask)
        zeros = weight_sparsity(tmp, o.mask)
        if zeros["sparsity"] < fraction * 0.9:
            raise OptimizeError(f"the written weights are {zeros['sparsity']:.1%} zeros, not the {fraction:.0%} asked for")
        metrics = _quality_and_size(model_dir, tmp, o.eval_samples) | zeros
        tool = "llm-compressor SparseGPT" + (f" + {o.quantize.upper()} (round to nearest)" if o.quantize else "")
        write_manifest(tmp, Manifest(
            kind="pruned-model",
            base_model=base_identity(o.model or model_dir.name, model_dir),
            recipe={"prune": {"structure": o.structure, "sparsity": fraction, "quantize": o.quantize, "group_size": group_size,
                              "calibration": o.calibration, "samples": len(texts), "tool": tool}},
            metrics=metrics,
            parents=[str(model_dir)],
        ))
    return Path(o.out)


def weight_sparsity(model_dir: Path, mask: str = "0:0") -> dict:
    """Zeros in the linear layers' weights as written (bf16, int8, or int4 packed in int32),
    whether every group of M consecutive input weights has at least N zeros, and the bytes a
    bitmask layout would take (16-bit non-zeros + 1 bit per weight) against the dense 16-bit ones."""
    import torch
    from safetensors import safe_open

    n, m = (int(x) for x in mask.split(":"))
    total = zeros = conforming = groups = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                if not PRUNED_LAYERS.search(name):
                    continue
                weight = f.get_tensor(name)
                if name.endswith("_packed"):  # compressed-tensors' int4: 8 values per int32
                    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

                    shape = torch.Size(f.get_tensor(name.removesuffix("_packed") + "_shape").tolist())
                    weight = unpack_from_int32(weight, 4, shape)
                total += weight.numel()
                zeros += int((weight == 0).sum())
                if m:
                    per_group = (weight.reshape(weight.shape[0], -1, m) == 0).sum(-1)
                    conforming += int((per_group >= n).sum())
                    groups += per_group.numel()
    if not total:
        raise OptimizeError(f"{model_dir}: no linear layer weights found")
    result = {"pruned_weights": total, "sparsity": round(zeros / total, 4),
              "bitmask_bytes_16bit": (total - zeros) * 2 + total // 8, "dense_bytes_16bit": total * 2}
    if m:
        result["n_m_groups_conforming"] = round(conforming / groups, 4)
    return result
