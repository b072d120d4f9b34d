"""Cross-check with the peer tool: `vllm bench serve` and `tuneserve bench` measure the same load
on the same tuneserve server and agree on median TTFT and TPOT within 10%.

Both send the same prompts (a ShareGPT file), 32 output tokens with ignore_eos, 8 at a time; the
server runs without prefix caching so whichever tool goes second is not served from cache. The
tools take turns, three rounds, and the medians over rounds are compared (single runs vary ~8%).
"""

import statistics
import tempfile
from pathlib import Path

import pytest

from tests.helpers import MODEL
from tuneserve.bench import BenchMatrix
from tuneserve.bench.peer import vllm_bench_serve, write_sharegpt
from tuneserve.bench.run import measure_setting, serving
from tuneserve.models import resolve_model

NUM_PROMPTS, INPUT_WORDS, OUTPUT_LEN, CONCURRENCY, ROUNDS = 32, 128, 32, 8, 3


@pytest.mark.slow
def test_tuneserve_bench_agrees_with_vllm_bench_serve(tmp_path):
    dataset = write_sharegpt(tmp_path / "prompts.json", NUM_PROMPTS, INPUT_WORDS, seed=0)
    matrix = BenchMatrix(
        model=MODEL, repeat=1,
        workload={"kind": "sharegpt", "path": str(dataset), "num_prompts": NUM_PROMPTS, "output_len": OUTPUT_LEN,
                  "ignore_eos": True, "unique_prefix": False},
        load={"max_concurrency": CONCURRENCY, "warmup_requests": 0},
        settings=[{"name": "tuneserve", "serve": {"prefix_caching": False, "max_model_len": 2048}}],
    )
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as log_dir, serving(matrix, matrix.settings[0], Path(log_dir)) as target:
        for i in range(ROUNDS):
            theirs.append(vllm_bench_serve(target.base_url, MODEL, resolve_model(MODEL), dataset, NUM_PROMPTS,
                                           OUTPUT_LEN, CONCURRENCY, tmp_path / f"vllm-{i}.json"))
            measured = measure_setting(matrix, matrix.settings[0], target, progress=print)
            ours.append(measured["rates"][0]["repeats"][0]["metrics"])
    assert all(r["completed"] == NUM_PROMPTS for r in ours + theirs)
    assert all(r["total_output_tokens"] == NUM_PROMPTS * OUTPUT_LEN for r in ours + theirs)
    print(f"\n| metric (median of {ROUNDS} rounds) | vllm bench serve | tuneserve bench | ratio |\n|---|---|---|---|")
    for key in ("median_ttft_ms", "median_tpot_ms", "median_itl_ms", "output_throughput"):
        a, b = statistics.median(r[key] for r in theirs), statistics.median(r[key] for r in ours)
        print(f"| {key} | {a:.1f} | {b:.1f} | {b / a:.3f} |")
        if key in ("median_ttft_ms", "median_tpot_ms"):
            assert b == pytest.approx(a, rel=0.10), key


def test_the_llamacpp_peer_serves_the_gguf_an_export_wrote_and_names_what_is_missing(tmp_path):
    from tuneserve.bench import llamacpp

    export = tmp_path / "export"
    export.mkdir()
    (export / "model.gguf").write_bytes(b"GGUF")
    cmd = llamacpp.command({"model": str(export), "max_model_len": 1024, "cpu_threads": 2}, 8123, parallel=16)
    assert cmd[cmd.index("tuneserve.bench.llamacpp") + 1] == str(export / "model.gguf")
    assert [cmd[cmd.index(f) + 1] for f in ("--port", "--threads", "--parallel", "--ctx")] == ["8123", "2", "16", "1024"]
    with pytest.raises(ValueError, match="tuneserve optimize export"):
        llamacpp.command({"model": MODEL}, 8123, parallel=1)
