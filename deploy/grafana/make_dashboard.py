"""Writes dashboards/tuneserve.json, the Grafana dashboard compose provisions.

    python deploy/grafana/make_dashboard.py        (tests/deploy checks the committed file is its output)

Every query reads a series tuneserve's /metrics serves (tuneserve_* or vLLM's vllm:*), or one
vllm-router serves (vllm_router_*); tests/deploy/test_monitoring.py checks the first against a live
server, tests/server/test_replicas.py the second against a live router.
"""

import json
from pathlib import Path

OUT = Path(__file__).parent / "dashboards" / "tuneserve.json"
RATE = "$__rate_interval"
SEL = 'instance=~"$instance"'

# (title, unit, [(legend, PromQL)]) per panel, two panels per row.
PANELS = [
    ("Requests per second by adapter", "reqps", [
        ("{{adapter}}", f'sum by (adapter) (rate(tuneserve_requests_total{{{SEL}}}[{RATE}]))'),
    ]),
    ("Errors per second by adapter and status", "reqps", [
        ("{{adapter}} {{status}}", f'sum by (adapter, status) (rate(tuneserve_requests_total{{{SEL}, status!~"2.."}}[{RATE}]))'),
    ]),
    ("Time to first token", "s", [
        (f"p{q}", f'histogram_quantile(0.{q}, sum by (le) (rate(tuneserve_time_to_first_token_seconds_bucket{{{SEL}}}[{RATE}])))')
        for q in (50, 90, 99)
    ]),
    ("Time per output token", "s", [
        (f"p{q}", f'histogram_quantile(0.{q}, sum by (le) (rate(tuneserve_time_per_output_token_seconds_bucket{{{SEL}}}[{RATE}])))')
        for q in (50, 90, 99)
    ]),
    ("Throughput (tokens per second)", "short", [
        ("generated", f'sum(rate(tuneserve_completion_tokens_total{{{SEL}}}[{RATE}]))'),
        ("prompt", f'sum(rate(tuneserve_prompt_tokens_total{{{SEL}}}[{RATE}]))'),
    ]),
    ("Queue: requests in the engine", "short", [
        ("running", f'sum(vllm:num_requests_running{{{SEL}}})'),
        ("waiting", f'sum(vllm:num_requests_waiting{{{SEL}}})'),
        ("admitted by tuneserve", f'sum(tuneserve_queue_depth{{{SEL}}})'),
    ]),
    ("KV-cache usage", "percentunit", [
        ("{{instance}}", f'vllm:kv_cache_usage_perc{{{SEL}}}'),
    ]),
    ("Prefix-cache hit rate", "percentunit", [
        ("hit rate", f'sum(rate(vllm:prefix_cache_hits_total{{{SEL}}}[{RATE}])) / sum(rate(vllm:prefix_cache_queries_total{{{SEL}}}[{RATE}]))'),
    ]),
    ("Speculative decoding: accepted draft tokens", "percentunit", [
        ("acceptance", f'sum(rate(vllm:spec_decode_num_accepted_tokens_total{{{SEL}}}[{RATE}])) / sum(rate(vllm:spec_decode_num_draft_tokens_total{{{SEL}}}[{RATE}]))'),
    ]),
    ("Adapters", "short", [
        ("loaded", f'sum(tuneserve_adapters_loaded{{{SEL}}})'),
        ("broken in --adapters-file", f'sum(tuneserve_adapters_file_errors{{{SEL}}}) or vector(0)'),
        ("hot swaps / min", f'sum(rate(tuneserve_adapter_swaps_total{{{SEL}}}[{RATE}])) * 60'),
        ("in the engine", f'sum(tuneserve_adapter_resident{{{SEL}, tier="engine"}})'),
        ("hit rate", f'sum(rate(tuneserve_adapter_lookups_total{{{SEL}, result="hit"}}[{RATE}])) / sum(rate(tuneserve_adapter_lookups_total{{{SEL}}}[{RATE}]))'),
    ]),
    ("Adapter loads and evictions per minute", "short", [
        ("loads ({{source}})", f'sum by (source) (rate(tuneserve_adapter_loads_total{{{SEL}}}[{RATE}])) * 60'),
        ("evicted from the engine", f'sum(rate(tuneserve_adapter_evictions_total{{{SEL}}}[{RATE}])) * 60'),
        ("unloaded for disk", f'sum(rate(tuneserve_adapter_disk_evictions_total{{{SEL}}}[{RATE}])) * 60'),
    ]),
    # vllm-router in front of replicas (serve --replicas, compose's replicas profile, the chart's router).
    ("Router: requests per second by replica", "reqps", [
        ("{{worker}}", f'sum by (worker) (rate(vllm_router_processed_requests_total[{RATE}]))'),
    ]),
    ("Router: replicas healthy, in flight, circuit open", "short", [
        ("healthy {{worker}}", 'vllm_router_worker_health'),
        ("in flight {{worker}}", 'vllm_router_running_requests'),
        ("circuit open {{worker}}", 'vllm_router_cb_state > 0'),
    ]),
    ("Cold loads: first request to engine", "s", [
        (f"p{q} {{{{kind}}}}", f'histogram_quantile(0.{q}, sum by (le, kind) (rate(tuneserve_adapter_load_seconds_bucket{{{SEL}}}[{RATE}])))')
        for q in (50, 99)
    ]),
]


def panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": {"type": "prometheus", "uid": "prometheus"}}
            for i, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard() -> dict:
    return {
        "uid": "tuneserve",
        "title": "tuneserve",
        "tags": ["tuneserve", "vllm"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "instance", "type": "query", "label": "Server",
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "query": {"query": "label_values(tuneserve_queue_depth, instance)", "refId": "instance"},
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
            "current": {"text": "All", "value": "$__all"},
        }]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
