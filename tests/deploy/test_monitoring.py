"""deploy/prometheus and deploy/grafana: promtool passes them, and every series the dashboard, the
alerts and the chart's autoscaler query is one a live tuneserve server exports."""

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.monitoring import (
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_OWN,
    ROUTER_PREFIX,
    SPECULATIVE,
    alert_queries,
    autoscaler_query,
    dashboard_queries,
    metric_names,
    served_names,
)
from tests.helpers import ADMIN_KEY, MODEL, require_tool

PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_INSTALL = "Debian: apt-get install prometheus; .ci/run does"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    binary = require_tool("promtool", install=PROMETHEUS_INSTALL)
    run = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_prometheus_config_and_alert_rules_pass_promtool():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "alerts.yml")


def test_alert_rules_fire_when_they_should():
    # alerts.test.yml: a target down 2 minutes pages, 10% errors fires and 1% does not, p99 TTFT
    # above 10 s fires, a broken adapters-file entry fires per adapter.
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_every_dashboard_and_autoscaler_query_is_valid_promql(tmp_path):
    queries = dashboard_queries() + [autoscaler_query()]
    rules = {"groups": [{"name": "queries", "rules": [
        {"record": f"q:{i}", "expr": expr} for i, (_, expr) in enumerate(queries)
    ]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in promtool("check", "rules", "queries.yml", cwd=tmp_path)


def test_the_committed_dashboard_is_the_generators_output():
    run = subprocess.run([sys.executable, "-c", (
        "import json, runpy; ns = runpy.run_path('deploy/grafana/make_dashboard.py', run_name='x'); "
        "print(json.dumps(ns['dashboard'](), indent=2))"
    )], cwd=DEPLOY.parent, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == json.loads(DASHBOARD.read_text()), "run python deploy/grafana/make_dashboard.py"


def test_metric_name_extraction():
    expr = 'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="by(b)"}[5m]))) / on(c) b:c > 10 and up == 0'
    assert metric_names(expr) == {"a_bucket", "b:c", "up"}


@pytest.mark.engine
def test_every_queried_series_is_exported_by_a_live_server(server, http):
    for model in (MODEL, "dates"):  # a request each, so that the per-adapter series have samples
        chat = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert chat.status_code == 200, chat.text
    exported = served_names(httpx.get(f"{server.base_url}/metrics").text)
    queries = dashboard_queries() + alert_queries() + [autoscaler_query()]
    missing = {
        (where, name) for where, expr in queries for name in metric_names(expr)
        if name not in exported | PROMETHEUS_OWN | SPECULATIVE and not name.startswith(ROUTER_PREFIX)
    }
    assert not missing, sorted(missing)
    assert {name for _, expr in queries for name in metric_names(expr)} & SPECULATIVE  # the panel exists


@pytest.mark.engine
def test_a_real_prometheus_scrapes_the_server_and_the_dashboard_shows_data(server, tmp_path):
    """Prometheus (Debian's) scrapes the session server every second; every dashboard query
    evaluates without error, and the panels fed by traffic return data."""
    require_tool("promtool", install=PROMETHEUS_INSTALL)
    prometheus = require_tool("prometheus", install=PROMETHEUS_INSTALL)
    from tuneserve.server.process import free_port

    port = free_port()
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "tuneserve", "static_configs": [{"targets": [server.base_url.removeprefix("http://")]}]}
    ]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    api = f"http://127.0.0.1:{port}/api/v1/query"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        def query(expr):
            body = httpx.get(api, params={"query": expr}, timeout=10).json()
            assert body["status"] == "success", (expr, body)
            return body["data"]["result"]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:  # Prometheus answers 503 "Service Unavailable" until its TSDB has opened: /-/ready says when
                ready = httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=10).status_code == 200
                if ready and query('up{job="tuneserve"} == 1'):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:])
        end = time.monotonic() + 5  # traffic across several scrapes, so that rate() has points
        while time.monotonic() < end:
            httpx.post(f"{server.base_url}/v1/chat/completions", headers=headers, timeout=60, json={
                "model": "dates", "messages": [{"role": "user", "content": "What is 3 March 2001 in ISO?"}], "max_tokens": 8,
            })
        time.sleep(1.5)
        results = {where: query(expr) for where, expr in dashboard_queries()}
    finally:
        process.terminate()
        process.wait(timeout=30)
    fed_by_traffic = ["Requests per second by adapter", "Time to first token", "Time per output token",
                      "Throughput (tokens per second)", "Queue: requests in the engine", "KV-cache usage",
                      "Prefix-cache hit rate", "Adapters"]
    empty = [title for title in fed_by_traffic if not results[f"dashboard: {title}"]]
    assert not empty, empty
    by_adapter = {r["metric"].get("adapter") for r in results["dashboard: Requests per second by adapter"]}
    assert "dates" in by_adapter
