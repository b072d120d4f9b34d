"""What bench reads from the server side: /metrics counter deltas and peak memory of the process tree."""

import threading
import time

import httpx

# vLLM's counters (tuneserve exposes the engine's own series): deltas over one measured run.
COUNTERS = (
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_draft_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_total", "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
)


def scrape_counters(clients: list[httpx.Client]) -> dict[str, float]:
    """Sum of each counter over its label sets and over the servers (replicas behind a router);
    a server whose /metrics is not reachable adds nothing."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for client in clients:
        try:
            response = client.get("/metrics", timeout=10)
        except httpx.HTTPError:
            continue
        if response.status_code != 200:
            continue
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                name = sample.name
                if name == "tuneserve_adapter_lookups_total":  # tuneserve's own: adapter hits and misses (loads on first use)
                    name = f"adapter_{sample.labels.get('result')}s"
                elif name == "tuneserve_adapter_loads_total":  # loads on first use, summed over replicas
                    if sample.labels.get("source") != "jit":
                        continue
                    name = "adapter_loads"
                elif name not in COUNTERS:
                    continue
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-run deltas, with the ratios people read: prefix-cache hit rate, speculative acceptance."""
    delta = {name.removeprefix("vllm:").removesuffix("_total"): after[name] - before.get(name, 0.0) for name in after}
    if delta.get("prefix_cache_queries"):
        delta["prefix_cache_hit_rate"] = delta.get("prefix_cache_hits", 0.0) / delta["prefix_cache_queries"]
    if delta.get("adapter_hits", 0) + delta.get("adapter_misses", 0):
        delta["adapter_hit_rate"] = delta.get("adapter_hits", 0.0) / (delta.get("adapter_hits", 0.0) + delta.get("adapter_misses", 0.0))
    if delta.get("spec_decode_num_draft_tokens"):
        delta["spec_decode_acceptance_rate"] = (
            delta.get("spec_decode_num_accepted_tokens", 0.0) / delta["spec_decode_num_draft_tokens"]
        )
    return delta


class PeakMemory:
    """Samples the resident memory of a process and all its children (vLLM's engine processes)
    every `interval_s`, and GPU memory through NVML when a GPU is present."""

    def __init__(self, pid: int | None, interval_s: float = 0.2):
        self.pid, self.interval_s = pid, interval_s
        self.peak_rss_bytes = 0
        self.peak_gpu_bytes = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        import psutil

        nvml = _nvml()
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                self.peak_rss_bytes = max(self.peak_rss_bytes, sum(_rss(p) for p in procs))
            except psutil.Error:
                pass
            if nvml is not None:
                used = sum(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).used
                           for i in range(nvml.nvmlDeviceGetCount()))
                self.peak_gpu_bytes = max(self.peak_gpu_bytes or 0, used)
            time.sleep(self.interval_s)


def _rss(process) -> int:
    import psutil

    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml if pynvml.nvmlDeviceGetCount() else None
    except Exception:  # no NVML library, no driver or no GPU: CPU-only measurement
        return None
