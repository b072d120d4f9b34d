"""`tuneserve bench run`: for each setting, start its server, warm up, measure every rate `repeat`
times, stop it (all of it `rounds` times, settings interleaved); write one JSON per setting, a
summary and the report."""

import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tuneserve.artifacts import Manifest, atomic_artifact, write_manifest
from tuneserve.bench import llamacpp
from tuneserve.bench.config import BenchMatrix, Setting
from tuneserve.bench.environment import environment
from tuneserve.bench.loadgen import run_load, send
from tuneserve.bench.metrics import (
    calculate_metrics,
    cold_and_warm_ttfts,
    cold_warm_stats,
    server_medians,
    slug,
    summarize_repeats,
)
from tuneserve.bench.report import write_report
from tuneserve.bench.server_stats import PeakMemory, counter_deltas, scrape_counters
from tuneserve.bench.workloads import BenchRequest, build_requests, prepare_adapter_mix
from tuneserve.config import bearer_headers, tuneserve_home
from tuneserve.engine import cpu_thread_env, engine_dtype, plan_kv_cache
from tuneserve.models import resolve_model
from tuneserve.server import free_port, launch, replica_ports, stop_server

HEADLINE = ("request_throughput", "output_throughput", "median_ttft_ms", "median_tpot_ms", "p99_ttft_ms")


@dataclass
class Target:
    base_url: str
    pid: int | None  # the server's process, for memory; None for --url
    model: str
    headers: dict[str, str]
    startup_s: float | None = None  # launch to ready; None for --url
    metrics_urls: list[str] | None = None  # whose /metrics to sum (the replicas behind a router); default base_url


def vllm_serve_command(values: dict, port: int) -> list[str]:
    """`vllm serve` with the model, dtype, context, threads, KV cache and eager mode tuneserve would use."""

    model_dir = resolve_model(values["model"])
    dtype = engine_dtype(values.get("dtype", "auto"))
    kv_bytes = plan_kv_cache(model_dir, dtype, values.get("max_model_len"), values.get("kv_cache_gib")).kv_cache_bytes
    cmd = [sys.executable, "-m", "tuneserve.bench.vllm_cli", "serve", str(model_dir), "--port", str(port),
           "--served-model-name", values["model"], "--dtype", dtype, "--kv-cache-memory-bytes", str(kv_bytes),
           "--seed", str(values.get("seed", 0))]
    if values.get("enforce_eager", True):  # tuneserve's CPU default
        cmd.append("--enforce-eager")
    for key in ("max_model_len", "max_num_seqs"):
        if values.get(key):
            cmd += [f"--{key.replace('_', '-')}", str(values[key])]
    if not values.get("prefix_caching", True):
        cmd.append("--no-enable-prefix-caching")
    return cmd


@contextlib.contextmanager
def serving(matrix: BenchMatrix, setting: Setting, log_dir: Path) -> Iterator[Target]:
    """The setting's server, started exactly as `tuneserve serve --config` would start it (or
    `vllm serve` for the peer, or nothing for a URL), stopped afterwards."""
    values = matrix.serve_config_for(setting)
    mix = matrix.workload_for(setting).adapter_mix
    if mix is not None and not setting.url:  # the adapters a mix asks for, where the server loads them on first use
        values = values | {"adapter_roots": [str(prepare_adapter_mix(mix, adapter_mix_dir(mix)))]}
    name = (values.get("served_model_name") or [values["model"]])[0]
    key = setting.api_key or os.environ.get("TUNESERVE_API_KEY")
    headers = bearer_headers(key)
    if setting.url:
        yield Target(setting.url.rstrip("/"), None, _served_name(setting.url, name, headers), headers)
        return
    port = free_port()
    if setting.engine == "vllm":
        cmd, ready = vllm_serve_command(values, port), "/health"
        env = cpu_thread_env(values.get("cpu_threads"))  # what `tuneserve serve` gives its engine
    elif setting.engine == "llamacpp":
        cmd, ready, env = llamacpp.command(values, port, matrix.load.max_concurrency or 1), "/health", None
    else:
        config = log_dir / f"{slug(setting.name)}.yaml"
        config.write_text(yaml.safe_dump(values))
        cmd, env = [sys.executable, "-m", "tuneserve", "serve", "--config", str(config), "--port", str(port)], None
        ready = "/health" if values.get("replicas", 1) > 1 else "/ready"  # the router's own answer for the whole
    started = time.monotonic()
    server = launch(cmd, port, log_dir, env=env, ready_path=ready)
    replicas = [f"http://127.0.0.1:{p}" for p in replica_ports(port, values.get("replicas", 1))]
    try:
        yield Target(server.base_url, server.process.pid, name, headers, time.monotonic() - started, replicas or None)
    finally:
        stop_server(server)


def adapter_mix_dir(mix) -> Path:
    """Where a mix's copies live: one directory per (sources' content, count), reused by later runs."""
    import hashlib

    digest = hashlib.sha256(str(mix.count).encode())
    for source in mix.sources:
        for file in sorted(Path(source).glob("adapter_*")):
            digest.update(file.read_bytes())
    return tuneserve_home() / "bench-adapters" / digest.hexdigest()[:16]


def _served_name(url: str, wanted: str, headers: dict) -> str:
    response = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{url}/v1/models answered {response.status_code}: {response.text[:200]}")
    models = response.json()["data"]
    ids = [m["id"] for m in models]
    return wanted if wanted in ids else ids[0]


async def _warm_up(client: httpx.AsyncClient, requests: list[BenchRequest], count: int) -> None:

    for request in requests[:count]:
        await send(client, BenchRequest(request.model, request.messages, 8, True, request.session), 0.0, 0, 0.0)


def measure_setting(matrix: BenchMatrix, setting: Setting, target: Target, progress: Callable[[str], None]) -> dict:
    """Every rate, `matrix.repeat` times, against a running server; raw timings kept (`pool_rounds`
    summarizes them)."""
    workload = matrix.workload_for(setting)
    nonce = uuid.uuid4().hex[:6]
    warm = build_requests(workload, target.model, f"warmup-{nonce}", matrix.seed)
    asyncio.run(_with_client(target, lambda c: _warm_up(c, warm, matrix.load.warmup_requests)))
    rates, seen = [], set(r.model for r in warm[:matrix.load.warmup_requests])
    for rate in matrix.load.request_rates:
        repeats, cold, warm_ttfts = [], [], []
        for rep in range(matrix.repeat):
            # The same seed every repeat and setting: the same lengths and adapter mix, so only
            # the server differs; the tag alone makes each run's prompts new.
            requests = build_requests(workload, target.model, f"{slug(setting.name)}-{nonce}-r{rate}-{rep}", matrix.seed)
            repeats.append(measure_once(matrix, target, requests, rate))
            m = repeats[-1]["metrics"]
            if workload.adapter_mix is not None:  # first uses of an adapter wait for its load: their TTFT apart
                c, w = cold_and_warm_ttfts(repeats[-1]["requests"], seen)
                cold, warm_ttfts = cold + c, warm_ttfts + w
            progress(f"  rate {_rate(rate)} repeat {rep + 1}/{matrix.repeat}: {m['output_throughput']:.1f} tok/s, "
                     f"median TTFT {m['median_ttft_ms']:.0f} ms, {m['failed']} failed")
        rates.append({"request_rate": rate, "repeats": repeats, "cold": cold, "warm": warm_ttfts})
    return {"rates": rates, "startup_s": target.startup_s}


def pool_rounds(rounds: list[dict], adapter_mix: bool) -> dict:
    """One setting's measurements over every round (each on its own server), as one: per rate the
    repeats of all rounds with their median and spread; start-up time the median, memory the peak."""
    rates = []
    for i, first in enumerate(rounds[0]["rates"]):
        repeats = [r for measured in rounds for r in measured["rates"][i]["repeats"]]
        summary = summarize_repeats([r["metrics"] for r in repeats])
        if adapter_mix:  # the cold loads happen in each server's first repeat
            cold = [t for measured in rounds for t in measured["rates"][i]["cold"]]
            warm = [t for measured in rounds for t in measured["rates"][i]["warm"]]
            summary |= {k: {"median": v, "min": v, "max": v} for k, v in cold_warm_stats(cold, warm).items() if v is not None}
        rates.append({"request_rate": first["request_rate"], "summary": summary, "repeats": repeats})
    startups = [m["startup_s"] for m in rounds if m["startup_s"] is not None]
    peak = max(r["metrics"]["peak_rss_bytes"] for rate in rates for r in rate["repeats"])
    return {"rates": rates, "peak_rss_bytes": peak, "startup_s": statistics.median(startups) if startups else None,
            "rounds": len(rounds)}


def measure_once(matrix: BenchMatrix, target: Target, requests: list[BenchRequest], rate: float) -> dict:
    """One run: its metrics, the server's counter deltas and peak memory, and the raw requests."""
    load = matrix.load

    async def work(client):
        return await run_load(client, requests, rate, load.burstiness, load.max_concurrency, matrix.temperature, matrix.seed)

    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=url, headers=target.headers))
                   for url in target.metrics_urls or [target.base_url]]
        before = scrape_counters(clients)
        with PeakMemory(target.pid) as memory:
            results, duration_s = asyncio.run(_with_client(target, work))
        after = scrape_counters(clients)
    metrics = calculate_metrics(results, duration_s, matrix.slo)
    metrics |= {"server": counter_deltas(before, after), "peak_rss_bytes": memory.peak_rss_bytes,
                "peak_gpu_bytes": memory.peak_gpu_bytes}
    return {"metrics": metrics, "requests": [r.to_dict() for r in results]}


async def _with_client(target: Target, work):
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=target.base_url, headers=target.headers, timeout=httpx.Timeout(600.0),
                                 limits=limits) as client:
        return await work(client)


def _rate(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}/s"


def setting_result(matrix: BenchMatrix, setting: Setting, measured: dict, env: dict) -> dict:
    """vLLM's result keys (medians over repeats at the first rate) plus tuneserve's."""
    first = measured["rates"][0]["summary"]
    result = {key: value["median"] for key, value in first.items()} | server_medians(measured["rates"][0], measured["rounds"])
    result |= {
        "date": env["date"], "backend": "openai-chat", "label": setting.name, "model_id": matrix.model,
        "num_prompts": matrix.workload_for(setting).num_prompts, "request_rate": measured["rates"][0]["request_rate"],
        "burstiness": matrix.load.burstiness, "max_concurrency": matrix.load.max_concurrency,
        "setting": redact(setting.model_dump()), "serve_config": redact(matrix.serve_config_for(setting)),
        "workload": matrix.workload_for(setting).model_dump(), "repeat": matrix.repeat * measured["rounds"],
        "rounds": measured["rounds"],
        "spread": {key: {"min": v["min"], "max": v["max"]} for key, v in first.items()},
        "peak_rss_bytes": measured["peak_rss_bytes"], "startup_s": measured["startup_s"], "rates": measured["rates"],
        "environment": env,
    }
    return result


def run_bench(matrix: BenchMatrix, out_dir: Path, progress: Callable[[str], None] = print, overwrite: bool = False) -> Path:
    """Measure every setting of `matrix`; write `out_dir` (results, summary.json, report/)."""

    env = environment()
    with atomic_artifact(out_dir, overwrite=overwrite) as tmp, tempfile.TemporaryDirectory() as log_dir:
        measured: dict[str, list[dict]] = {s.name: [] for s in matrix.settings}
        errors: dict[str, str] = {}
        for round_ in range(1, matrix.rounds + 1):  # settings interleaved: drift in machine speed spreads over all
            for i, setting in enumerate(matrix.settings, 1):
                if setting.name in errors:
                    continue
                label = f" (round {round_}/{matrix.rounds})" if matrix.rounds > 1 else ""
                progress(f"[{i}/{len(matrix.settings)}] {setting.name}{label}")
                try:
                    with serving(matrix, setting, Path(log_dir)) as target:
                        measured[setting.name].append(measure_setting(matrix, setting, target, progress))
                except (RuntimeError, ValueError) as e:  # it did not start (or its model is unknown): record it, go on
                    progress(f"  failed: {str(e).splitlines()[0]}")
                    errors[setting.name] = str(e)[-4000:]
        summary = []
        for setting in matrix.settings:
            if setting.name in errors:
                result = {"label": setting.name, "error": errors[setting.name], "setting": redact(setting.model_dump()),
                          "environment": env}
            else:
                pooled = pool_rounds(measured[setting.name], matrix.workload_for(setting).adapter_mix is not None)
                result = setting_result(matrix, setting, pooled, env)
            (tmp / f"{slug(setting.name)}.json").write_text(json.dumps(finite(result), indent=1) + "\n")
            summary.append({k: v for k, v in result.items() if k != "rates"})
        (tmp / "summary.json").write_text(json.dumps(finite(
            {"name": matrix.name, "environment": env, "matrix": _public(matrix), "settings": summary}), indent=1) + "\n")
        write_report(tmp)
        write_manifest(tmp, Manifest(kind="bench-result", recipe=finite(_public(matrix)),
                                     metrics={s["label"]: {k: s.get(k) for k in HEADLINE} for s in summary}))
    return out_dir


def redact(value):
    """Keys never reach result files: any `api_key` value becomes "<redacted>"."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k == "api_key" and v else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _public(matrix: BenchMatrix) -> dict:
    return redact(matrix.model_dump())


def finite(value):
    """JSON has no infinity: an unbounded rate is written "inf", as vLLM writes it."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
