"""/metrics parses with prometheus_client and counts what the test sent, per adapter."""

import pytest

from tests.helpers import MODEL, chat_body, metric, read_metrics

pytestmark = pytest.mark.engine


def series(samples: dict, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_per_adapter_counters_match_the_requests_sent(http):
    before = read_metrics(http)
    sent = {"dates": 3, "units": 2, MODEL: 1}
    usage = {name: [0, 0] for name in sent}
    for model, count in sent.items():
        for _ in range(count):
            response = http.post("/v1/chat/completions", json=chat_body(model=model, max_tokens=6, temperature=0))
            assert response.status_code == 200, response.text
            body = response.json()
            usage[model][0] += body["usage"]["prompt_tokens"]
            usage[model][1] += body["usage"]["completion_tokens"]
    http.post("/v1/chat/completions", json=chat_body(model="dates", max_tokens=0))  # a 400, not counted as 200
    after = read_metrics(http)

    def delta(name: str, **labels) -> float:
        return series(after, name, **labels) - series(before, name, **labels)

    for model, count in sent.items():
        adapter = "none" if model == MODEL else model
        assert delta("tuneserve_requests_total", adapter=adapter, status="200") == count
        assert delta("tuneserve_prompt_tokens_total", adapter=adapter) == usage[model][0]
        assert delta("tuneserve_completion_tokens_total", adapter=adapter) == usage[model][1]
        assert delta("tuneserve_request_latency_seconds_count", adapter=adapter) == count
        assert delta("tuneserve_time_to_first_token_seconds_count", adapter=adapter) == count


def test_engine_and_adapter_gauges_are_exported(http):
    samples = read_metrics(http)
    names = {name for name, _ in samples}
    for name in (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total", "tuneserve_queue_depth", "tuneserve_engine_unfinished_requests",
        "tuneserve_adapter_swaps_total", "tuneserve_adapter_evictions_total",
    ):
        assert name in names, name
    assert metric(samples, "tuneserve_adapters_loaded") >= 2
