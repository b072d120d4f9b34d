"""The metric maths on hand-made traces: vLLM `bench serve`'s definitions."""

import math

import pytest

from tuneserve.bench.loadgen import arrival_gaps_s
from tuneserve.bench.metrics import RequestResult, calculate_metrics, parse_slo, summarize_repeats, tpot_s


def ok(ttft_s, itl_s, output_tokens, prompt_len=10, queue_s=0.0):
    return RequestResult(prompt_len=prompt_len, output_tokens=output_tokens, success=True, ttft_s=ttft_s,
                         itl_s=list(itl_s), latency_s=ttft_s + sum(itl_s), queue_s=queue_s)


def test_tpot_excludes_the_first_token_and_ttft():
    # 1 s to the first token, then 4 more tokens over 2 s: TPOT 0.5 s.
    assert tpot_s(ok(1.0, [0.5, 0.5, 0.5, 0.5], 5)) == pytest.approx(0.5)


def test_one_token_outputs_have_no_tpot_and_do_not_drag_its_mean():
    m = calculate_metrics([ok(0.2, [], 1), ok(0.4, [0.1, 0.1, 0.1], 4)], duration_s=1.0)
    assert m["mean_tpot_ms"] == pytest.approx(100)  # only the 4-token request has a TPOT
    assert m["median_ttft_ms"] == pytest.approx(300)
    assert m["total_output_tokens"] == 5


def test_speculative_chunks_carry_several_tokens_tpot_counts_tokens_itl_counts_chunks():
    # Speculative decoding: 9 tokens arrive in 3 chunks after the first (ITL per chunk, 0.3 s each).
    request = ok(0.1, [0.3, 0.3, 0.3], output_tokens=10)
    m = calculate_metrics([request], duration_s=1.0)
    assert m["median_itl_ms"] == pytest.approx(300)
    assert m["median_tpot_ms"] == pytest.approx(100)  # 0.9 s / 9 tokens
    assert m["median_e2el_ms"] == pytest.approx(1000)


def test_failures_count_apart_and_stay_out_of_latencies_and_throughput():
    failed = RequestResult(error="HTTP 503", output_tokens=0)
    m = calculate_metrics([ok(0.5, [0.1], 2), failed], duration_s=2.0)
    assert (m["completed"], m["failed"]) == (1, 1)
    assert m["output_throughput"] == pytest.approx(1.0)
    assert m["request_throughput"] == pytest.approx(0.5)
    assert m["p99_ttft_ms"] == pytest.approx(500)


def test_goodput_counts_requests_meeting_every_slo():
    fast, slow_first, slow_decode = ok(0.1, [0.01] * 9, 10), ok(2.0, [0.01] * 9, 10), ok(0.1, [0.2] * 9, 10)
    m = calculate_metrics([fast, slow_first, slow_decode], duration_s=1.0, slo_ms={"ttft": 500, "tpot": 50})
    assert m["request_goodput"] == pytest.approx(1.0)
    assert calculate_metrics([fast], 1.0)["request_goodput"] is None


def test_client_queueing_is_reported_apart_from_ttft():
    m = calculate_metrics([ok(0.2, [0.1], 2, queue_s=3.0), ok(0.2, [0.1], 2, queue_s=1.0)], duration_s=1.0)
    assert m["median_ttft_ms"] == pytest.approx(200)
    assert m["median_queue_ms"] == pytest.approx(2000)


def test_percentiles_on_a_known_distribution():
    results = [ok(t / 100, [0.01], 2) for t in range(1, 101)]  # TTFT 10 ms .. 1000 ms
    m = calculate_metrics(results, duration_s=10.0)
    assert m["p90_ttft_ms"] == pytest.approx(901, abs=1)
    assert m["p99_ttft_ms"] == pytest.approx(990.1, abs=1)


def test_repeats_summarize_to_median_and_spread():
    summary = summarize_repeats([{"output_throughput": 100.0, "x": "text"}, {"output_throughput": 130.0, "x": "t"},
                                 {"output_throughput": 90.0, "x": "t"}])
    assert summary == {"output_throughput": {"median": 100.0, "min": 90.0, "max": 130.0}}


def test_arrivals_have_the_asked_mean_rate_and_burstiness_widens_them():
    poisson = arrival_gaps_s(4000, 4.0, 1.0, seed=0)
    bursty = arrival_gaps_s(4000, 4.0, 0.25, seed=0)
    assert sum(poisson) / len(poisson) == pytest.approx(0.25, rel=0.05)
    assert sum(bursty) / len(bursty) == pytest.approx(0.25, rel=0.1)
    cv = lambda xs: math.sqrt(sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs)) / (sum(xs) / len(xs))  # noqa: E731
    assert cv(poisson) == pytest.approx(1.0, abs=0.1)  # exponential gaps
    assert cv(bursty) == pytest.approx(2.0, abs=0.2)  # gamma shape 0.25: cv = 1/sqrt(0.25)
    assert arrival_gaps_s(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]


def test_slo_flag_parses_and_names_bad_parts():
    assert parse_slo("ttft_ms=500,tpot_ms=50") == {"ttft": 500.0, "tpot": 50.0}
    with pytest.raises(ValueError, match="'latency=3'"):
        parse_slo("latency=3")
    with pytest.raises(ValueError, match="'fast' is not a number"):
        parse_slo("ttft_ms=fast")
