"""What vLLM would refuse after minutes of start-up, or run badly, said in one line first."""

import json
import platform
from pathlib import Path

from tuneserve.engine.cpu import cpu_thread_env
from tuneserve.errors import StartupError
from tuneserve.models import model_facts


def check_parallelism(config, model_dir: Path, is_cpu: bool) -> None:
    """What vLLM would refuse after minutes of start-up, or run badly, said in one line now."""
    facts = model_facts(model_dir)
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    if facts.num_heads % tp:
        raise StartupError(
            f"--tensor-parallel-size {tp}: the model has {facts.num_heads} attention heads, which {tp} ranks cannot "
            f"share evenly; use a size that divides {facts.num_heads}, or --pipeline-parallel-size instead"
        )
    if facts.num_kv_heads % tp and tp % facts.num_kv_heads:
        raise StartupError(
            f"--tensor-parallel-size {tp}: the model's {facts.num_kv_heads} KV heads cannot be split or replicated "
            f"over {tp} ranks; use a size that divides {facts.num_kv_heads} or a multiple of it"
        )
    if pp > facts.num_layers:
        raise StartupError(f"--pipeline-parallel-size {pp}: the model has only {facts.num_layers} layers")
    if is_cpu and config.num_ranks > 1:
        try:
            cpu_thread_env(config.cpu_threads, config.num_ranks)
        except ValueError as e:
            raise StartupError(str(e)) from None


def check_platform_options(config, is_cpu: bool) -> None:
    if is_cpu and config.gpu_memory_utilization is not None:
        raise StartupError("--gpu-memory-utilization applies to GPUs; on CPU size the KV cache with --kv-cache-gib")
    if not is_cpu and config.cpu_threads is not None:
        raise StartupError("--cpu-threads applies to the CPU build of vLLM; this one runs on a GPU")


def check_kernels(model_dir: Path) -> None:
    """On CPU: the model's quantization has a kernel in this machine's vLLM build.

    vLLM's CPU kernel for weight-only quantization (W4A16, GPTQ, AWQ: `cpu_gemm_wna16`) is built
    into its AVX-512 libraries only; on an AVX2 x86 CPU vLLM picks it anyway and its worker dies
    at the first request. Int8 W8A8 runs on both (oneDNN)."""
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64") or torch.cpu._is_avx512_supported():
        return
    config_file = Path(model_dir) / "config.json"
    quant = (json.loads(config_file.read_text()).get("quantization_config") or {}) if config_file.exists() else {}
    groups = (quant.get("config_groups") or {}).values()
    weight_only = quant.get("quant_method") in ("gptq", "awq") or (
        quant.get("quant_method") == "compressed-tensors" and any(g.get("weights") and not g.get("input_activations") for g in groups))
    if weight_only:
        raise StartupError(
            f"{Path(model_dir).name}: weight-only quantized (W4A16/GPTQ/AWQ), and vLLM's CPU kernel for that is built for "
            "AVX-512 only; this CPU has AVX2. Serve it on an AVX-512 CPU or a GPU, or quantize with --scheme w8a8"
        )
