"""What the deploy/ monitoring files query: the PromQL of the dashboard, the alert rules and the
chart's autoscaler, and the metric names each one reads."""

import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tuneserve.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
CHART = DEPLOY / "helm" / "tuneserve"

# Series Prometheus makes itself, and those vLLM registers only when speculative decoding is on
# (tests/optimize/test_distill.py checks those on a speculative server).
PROMETHEUS_OWN = {"up"}
SPECULATIVE = {"vllm:spec_decode_num_accepted_tokens_total", "vllm:spec_decode_num_draft_tokens_total"}
ROUTER_PREFIX = "vllm_router_"  # vllm-router's own series (tests/server/test_replicas.py checks them on a live router)
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(f"dashboard: {p['title']}", with_variables(t["expr"])) for p in panels for t in p["targets"]]


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(f"alert: {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def autoscaler_query() -> tuple[str, str]:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        rendered = chart.render({"autoscaling": {"enabled": True}, "modelCache": {"accessModes": ["ReadWriteMany"]}},
                                name="demo", namespace="llm")
    scaled = yaml.safe_load(rendered["tuneserve/templates/autoscaling.yaml"])
    return "autoscaler: KEDA ScaledObject", scaled["spec"]["triggers"][0]["metadata"]["query"]


def with_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, ranges, strings and
    grouping clauses that are not functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def served_names(metrics_text: str) -> set[str]:
    """Every series name a /metrics page exports: those with samples, and the families it declares
    (a labelled family has no sample until its first label set, e.g. no broken adapter yet)."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {name} | ({f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else set())
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names
