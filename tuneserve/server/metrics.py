"""GET /metrics: Prometheus text with tuneserve's series and vLLM's own engine series.

vLLM's AsyncLLM registers its `vllm:*` series (running/waiting requests, KV-cache usage,
prefix-cache hits, spec-decode acceptance) in prometheus_client's default registry, so one
scrape returns both.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LABELS = ["model", "adapter"]
BASE = "none"  # the adapter label of requests to the base model
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TOKEN_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)

REQUESTS = Counter("tuneserve_requests", "Inference requests by outcome.", [*LABELS, "status"])
LATENCY = Histogram("tuneserve_request_latency_seconds", "Request latency, arrival to last byte.", LABELS, buckets=LATENCY_BUCKETS_S)
TTFT = Histogram("tuneserve_time_to_first_token_seconds", "Arrival to first generated token.", LABELS, buckets=LATENCY_BUCKETS_S)
TPOT = Histogram("tuneserve_time_per_output_token_seconds", "Decode time per output token after the first.", LABELS, buckets=TOKEN_BUCKETS_S)
PROMPT_TOKENS = Counter("tuneserve_prompt_tokens", "Prompt tokens processed.", LABELS)
COMPLETION_TOKENS = Counter("tuneserve_completion_tokens", "Tokens generated.", LABELS)
ADAPTERS_LOADED = Gauge("tuneserve_adapters_loaded", "Adapters currently loaded (current versions).")
ADAPTER_SWAPS = Counter("tuneserve_adapter_swaps", "Hot swaps: a name loaded again with a new version.")
ADAPTER_EVICTIONS = Counter("tuneserve_adapter_evictions", "Adapter versions removed from the engine.")
ADAPTER_LOADS = Counter("tuneserve_adapter_loads", "Adapter loads, by how they came (cli, file, api, jit: on first use).", ["source"])
ADAPTER_LOAD_SECONDS = Histogram(
    "tuneserve_adapter_load_seconds", "Loads on first use, from the request to the engine (fetch, snapshot, checks), by source kind.",
    ["kind"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
ADAPTER_LOOKUPS = Counter("tuneserve_adapter_lookups", "Requests naming an adapter: hit (loaded) or miss (loaded on first use).", ["adapter", "result"])
ADAPTER_DISK_EVICTIONS = Counter("tuneserve_adapter_disk_evictions", "Adapters unloaded to keep the snapshots within --adapter-disk-gib.")
ADAPTERS_RESIDENT = Gauge(
    "tuneserve_adapter_resident", "1 per adapter and tier: engine (in vLLM's adapter cache now) or disk (loaded, its checked "
    "snapshot on disk). What a LoRA-affinity router reads.", ["adapter", "tier"],
)
ADAPTERS_FILE_ERRORS = Gauge("tuneserve_adapters_file_errors", "1 for each --adapters-file entry that is not served as declared.", ["adapter"])
ADAPTERS_FILE_RECONCILES = Counter("tuneserve_adapters_file_reconciles", "--adapters-file reconcile rounds by result (ok, error, file_error).", ["result"])
GUARD_EVENTS = Counter("tuneserve_guard_events", "Requests a guard blocked or flagged.", ["guard", "action", "tenant"])
QUEUE_DEPTH = Gauge("tuneserve_queue_depth", "Inference requests admitted and not yet finished.")
ENGINE_UNFINISHED = Gauge("tuneserve_engine_unfinished_requests", "Requests the engine holds (running + waiting), read when scraped.")


@dataclass
class RequestStats:
    """One request's timings and token counts, filled in as it runs."""

    model: str
    adapter: str = BASE
    owner: str | None = None  # the tenant's name: whose stored responses this request may read
    arrival_s: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    # The tenant's hold on its token budget: called with the most this request can use before
    # each engine request starts (set by inference.run_inference when the caller has a limit).
    reserve_tokens: Callable[[int], None] | None = None
    num_reserved_tokens: int = 0

    def on_output(self, num_new_tokens: int) -> None:
        if num_new_tokens and self.first_token_s is None:
            self.first_token_s = time.monotonic()
        self.num_completion_tokens += num_new_tokens

    def record(self, status: int) -> None:
        labels = (self.model, self.adapter)
        REQUESTS.labels(*labels, str(status)).inc()
        LATENCY.labels(*labels).observe(time.monotonic() - self.arrival_s)
        PROMPT_TOKENS.labels(*labels).inc(self.num_prompt_tokens)
        COMPLETION_TOKENS.labels(*labels).inc(self.num_completion_tokens)
        if self.first_token_s is not None:
            TTFT.labels(*labels).observe(self.first_token_s - self.arrival_s)
            if self.num_completion_tokens > 1:
                decode_s = time.monotonic() - self.first_token_s
                TPOT.labels(*labels).observe(decode_s / (self.num_completion_tokens - 1))


def render_metrics(num_engine_unfinished: int) -> tuple[bytes, str]:
    ENGINE_UNFINISHED.set(num_engine_unfinished)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
