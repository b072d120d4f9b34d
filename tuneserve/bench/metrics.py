"""Benchmark metrics as pure functions over raw per-request timings.

The definitions are vLLM `bench serve`'s, so results from both tools sit in one table:
TTFT = time to the first streamed chunk that carries a choice; ITL = gaps between such chunks;
TPOT = (E2EL - TTFT) / (output_tokens - 1), only for requests with more than one output token;
E2EL = time to the last token chunk; output tokens come from the server's `usage`.
Goodput counts requests that meet every SLO (a one-token request has TPOT 0 for this purpose).
"""

import math
import re
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np

from tuneserve.bench.errors import BenchError

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestResult:
    """What the load generator records for one request (seconds, from the client's clock)."""

    model: str = ""
    prompt_len: int = 0
    output_tokens: int = 0
    success: bool = False
    error: str = ""
    start_s: float = 0.0  # when the request was sent, relative to the start of the run
    queue_s: float = 0.0  # time waiting client-side for a concurrency slot, before start_s
    ttft_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    latency_s: float = 0.0
    cached_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def tpot_s(result: RequestResult) -> float:
    """Time per output token after the first (0 when there is at most one output token)."""
    if result.output_tokens <= 1:
        return 0.0
    return (result.latency_s - result.ttft_s) / (result.output_tokens - 1)


def meets_slo(result: RequestResult, slo_ms: dict[str, float]) -> bool:
    values_s = {"ttft": result.ttft_s, "tpot": tpot_s(result), "e2el": result.latency_s}
    return all(values_s[name] * 1000 <= limit for name, limit in slo_ms.items())


def _stats(name: str, values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s or [0.0]) * 1000
    stats = {f"mean_{name}_ms": float(ms.mean()), f"median_{name}_ms": float(np.median(ms)),
             f"std_{name}_ms": float(ms.std())}
    stats |= {f"p{p}_{name}_ms": float(np.percentile(ms, p)) for p in PERCENTILES}
    return stats


def calculate_metrics(results: list[RequestResult], duration_s: float, slo_ms: dict[str, float] | None = None) -> dict:
    """One run's metrics with vLLM's result keys (`output_throughput`, `p99_ttft_ms`, ...)."""
    done = [r for r in results if r.success]
    num_output = sum(r.output_tokens for r in done)
    num_input = sum(r.prompt_len for r in done)
    metrics = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": num_input,
        "total_output_tokens": num_output,
        "request_throughput": len(done) / duration_s,
        "request_goodput": sum(meets_slo(r, slo_ms) for r in done) / duration_s if slo_ms else None,
        "output_throughput": num_output / duration_s,
        "total_token_throughput": (num_input + num_output) / duration_s,
        "cached_prompt_tokens": sum(r.cached_tokens for r in done),
        "cached_prompt_share": sum(r.cached_tokens for r in done) / num_input if num_input else 0.0,
    }
    metrics |= _stats("ttft", [r.ttft_s for r in done])
    metrics |= _stats("tpot", [tpot_s(r) for r in done if r.output_tokens > 1])
    metrics |= _stats("itl", [gap for r in done for gap in r.itl_s])
    metrics |= _stats("e2el", [r.latency_s for r in done])
    metrics |= _stats("queue", [r.queue_s for r in done])
    return metrics


def summarize_repeats(repeats: list[dict]) -> dict[str, dict[str, float]]:
    """Median and min-max spread of every numeric metric over repeats of the same load."""
    summary = {}
    for key in repeats[0]:
        values = [r[key] for r in repeats if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if len(values) == len(repeats):
            summary[key] = {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}
    return summary


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft_ms=500,tpot_ms=50` -> {"ttft": 500.0, "tpot": 50.0}; names the bad part otherwise."""
    slo = {}
    for part in filter(None, (text or "").split(",")):
        name, sep, value = part.partition("=")
        name = name.strip().removesuffix("_ms")
        if not sep or name not in ("ttft", "tpot", "e2el"):
            raise BenchError(f"slo: {part!r} is not ttft_ms=N, tpot_ms=N or e2el_ms=N")
        try:
            slo[name] = float(value)
        except ValueError:
            raise BenchError(f"slo: {part!r}: {value!r} is not a number") from None
    return slo


def slug(name: str) -> str:
    """A setting's name as a file name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "setting"


SERVER_RATIOS = ("prefix_cache_hit_rate", "spec_decode_acceptance_rate", "adapter_hit_rate")
SERVER_TOTALS = ("adapter_loads",)  # over the repeats on one server: the loads happen in the first


def server_medians(rate: dict, rounds: int = 1) -> dict:
    """Medians over repeats of the server-side ratios (vLLM's result key for spec decoding), and
    totals of the counts that only a server's first repeat has (adapter loads, over every
    replica), per server: divided by the `rounds` that each started one."""
    values = {key: [r["metrics"]["server"][key] for r in rate["repeats"] if key in r["metrics"].get("server", {})]
              for key in SERVER_RATIOS + SERVER_TOTALS}
    return {key: sum(v) / rounds if key in SERVER_TOTALS else statistics.median(v) for key, v in values.items() if v}


def cold_and_warm_ttfts(requests: list[dict], seen: set[str]) -> tuple[list[float], list[float]]:
    """TTFTs of the requests that waited for their adapter to load (sent before the first answer
    for an adapter not used in an earlier run, `seen`), and of the rest. Updates `seen`."""
    first_answer: dict[str, float] = {}
    for r in requests:
        if r["success"] and r["model"] not in seen:
            first_answer[r["model"]] = min(first_answer.get(r["model"], math.inf), r["start_s"] + r["ttft_s"])
    cold, warm = [], []
    for r in requests:
        if r["success"]:
            is_cold = r["model"] in first_answer and r["start_s"] <= first_answer[r["model"]]
            (cold if is_cold else warm).append(r["ttft_s"])
    seen |= {r["model"] for r in requests if r["success"]}
    return cold, warm


def cold_warm_stats(cold: list[float], warm: list[float]) -> dict:
    return {"num_cold_requests": len(cold), "median_ttft_cold_ms": float(np.median(cold)) * 1000 if cold else None,
            "median_ttft_warm_ms": float(np.median(warm)) * 1000 if warm else None}
