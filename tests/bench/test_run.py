"""`tuneserve bench run` against real servers: the shared one by URL, and one it starts itself."""

import base64
import io
import json
import re
import statistics
import subprocess
import sys

import pytest

from tests.helpers import ADMIN_KEY, MODEL
from tuneserve.bench import BenchMatrix, run_bench
from tuneserve.bench.report import markdown_table

VLLM_KEYS = ("completed", "failed", "total_output_tokens", "request_throughput", "output_throughput",
             "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_itl_ms", "median_e2el_ms")


def requests_of(result: dict, repeat: int) -> list[dict]:
    return result["rates"][0]["repeats"][repeat]["requests"]


def server_counts(result: dict, repeat: int) -> dict:
    return result["rates"][0]["repeats"][repeat]["metrics"]["server"]


@pytest.fixture(scope="module")
def url_run(server, tmp_path_factory):
    """Two settings on the shared server: tagged prompts (the default) and verbatim prompts."""
    matrix = BenchMatrix(
        name="url-run", model=MODEL, repeat=2,
        workload={"num_prompts": 4, "input_len": 400, "output_len": 8},
        load={"max_concurrency": 2, "warmup_requests": 1},
        slo={"ttft": 60_000, "tpot": 1},
        settings=[{"name": "tagged", "url": server.base_url, "api_key": ADMIN_KEY},
                  {"name": "verbatim", "url": server.base_url, "api_key": ADMIN_KEY,
                   "workload": {"unique_prefix": False}}],
    )
    out = run_bench(matrix, tmp_path_factory.mktemp("bench") / "run", progress=print)
    return out, {name: json.loads((out / f"{name}.json").read_text()) for name in ("tagged", "verbatim")}


def test_results_carry_vllm_keys_and_exact_token_counts(url_run):
    _, results = url_run
    for result in results.values():
        assert all(isinstance(result[key], (int, float)) for key in VLLM_KEYS), result.keys()
        assert result["completed"] == 4 and result["failed"] == 0
        # ignore_eos: every request generates exactly output_len tokens, counted from the server's usage
        assert result["total_output_tokens"] == 4 * 8
        # The role chunk comes with the first token and counts as the first chunk (as in vLLM's
        # bench); then one chunk per token, the last carrying finish_reason: 8 gaps.
        for rep in (0, 1):
            assert all(len(r["itl_s"]) == 8 and r["prompt_len"] > 400 for r in requests_of(result, rep))
        # The headline is the median of the repeats' own figures, the spread their min and max.
        per_repeat = [r["metrics"]["output_throughput"] for r in result["rates"][0]["repeats"]]
        assert result["output_throughput"] == pytest.approx(statistics.median(per_repeat))
        assert result["spread"]["output_throughput"] == {"min": min(per_repeat), "max": max(per_repeat)}
        assert per_repeat[0] == pytest.approx(4 * 8 / result["rates"][0]["repeats"][0]["metrics"]["duration"])
        assert result["request_goodput"] == 0  # no request meets a 1 ms TPOT SLO
        assert result["serve_config"]["model"] == MODEL


def test_tagged_prompts_defeat_the_prefix_cache_and_verbatim_repeats_hit_it(url_run):
    _, results = url_run
    tagged, verbatim = results["tagged"], results["verbatim"]
    # Verbatim: the second repeat sends the first repeat's prompts again and the engine's
    # prefix cache serves most of them; tagged runs share no more than the chat template's start.
    assert server_counts(verbatim, 1)["prefix_cache_hit_rate"] > 0.5
    assert server_counts(tagged, 1)["prefix_cache_hits"] <= server_counts(tagged, 0)["prefix_cache_hits"] + 4 * 32
    assert server_counts(tagged, 1)["prefix_cache_hit_rate"] < 0.2


def test_prompts_are_as_long_whatever_the_settings_name():
    """The tag that keeps runs out of each other's prefix cache is a fixed-length digest: a setting
    named at length does not get longer prompts (it did, +2.8% prompt tokens, in a LoRA on/off run)."""
    from tuneserve.bench.config import Workload
    from tuneserve.bench.workloads import build_requests

    for kind in ("synthetic", "multiturn"):
        workload = Workload(kind=kind, num_prompts=8, input_len=16, output_len=4)
        short, long = (build_requests(workload, MODEL, f"{name}-abc123-rinf-0", 0) for name in ("a", "lora-on-no-adapter-used"))
        assert [len(str(r.messages)) for r in short] == [len(str(r.messages)) for r in long]
        assert short[0].messages != long[0].messages


def test_keys_never_reach_the_result_files(url_run):
    out, _ = url_run
    for path in out.rglob("*.json"):
        assert ADMIN_KEY not in path.read_text(), path


def test_rounds_interleave_settings_and_pool_their_runs(server, tmp_path):
    """rounds: 2 measures A, B, A, B (never A, A, B, B: a machine that slows down during the run
    would favour A) and reports each setting over both rounds' runs."""
    matrix = BenchMatrix(
        name="rounds", model=MODEL, repeat=1, rounds=2,
        workload={"num_prompts": 2, "input_len": 16, "output_len": 4},
        load={"max_concurrency": 2, "warmup_requests": 0},
        settings=[{"name": name, "url": server.base_url, "api_key": ADMIN_KEY} for name in ("a", "b")],
    )
    lines: list[str] = []
    out = run_bench(matrix, tmp_path / "run", progress=lines.append)
    assert [line.split()[1] for line in lines if line.startswith("[")] == ["a", "b", "a", "b"]
    result = json.loads((out / "a.json").read_text())
    assert result["repeat"] == 2 and result["rounds"] == 2 and len(result["rates"][0]["repeats"]) == 2
    assert result["completed"] == 2
    assert "median of 2 runs (2 rounds of 1, settings interleaved)" in (out / "report" / "table.md").read_text()


def test_report_has_the_table_and_real_plots(url_run):
    from PIL import Image

    out, _ = url_run
    summary = json.loads((out / "summary.json").read_text())
    table = markdown_table(summary)
    assert table.splitlines()[2].startswith("| tagged |") and "1.00x" in table.splitlines()[2]
    page = (out / "report" / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # throughput, TTFT, latency distributions (one rate: no sweep plot)
    for data in images:
        width, height = Image.open(io.BytesIO(base64.b64decode(data))).size
        assert width > 500 and height > 200
    assert "tagged" in page and "verbatim" in page and summary["environment"]["num_cores"] >= 1


def test_bench_run_cli_starts_each_setting_like_tuneserve_serve(tmp_path):
    """The CLI on a matrix: a setting it starts itself (and stops), and a broken one that is
    reported without stopping the run."""
    (tmp_path / "matrix.yaml").write_text(f"""
name: managed
model: {MODEL}
repeat: 1
workload: {{num_prompts: 4, input_len: 32, output_len: 8}}
load: {{request_rates: [inf, 4], warmup_requests: 1}}
settings:
  - name: small context
    serve: {{max_model_len: 1024, max_num_seqs: 4, kv_cache_gib: 0.5}}
  - name: broken
    serve: {{model: no-such-model}}
""")
    done = subprocess.run([sys.executable, "-m", "tuneserve", "bench", "run", str(tmp_path / "matrix.yaml"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[2/2] broken" in done.stdout and "failed: server exited" in done.stdout
    result = json.loads((tmp_path / "out" / "small-context.json").read_text())
    assert [r["request_rate"] for r in result["rates"]] == ["inf", 4.0]
    assert all(r["summary"]["completed"]["median"] == 4 for r in result["rates"])
    # Memory of the whole process tree: the API process alone holds no weights; the engine
    # core holds the bf16 weights (0.27 GB) and the 0.5 GiB KV cache.
    assert result["peak_rss_bytes"] > 0.27e9 + 0.5 * (1 << 30)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "did not start" in markdown_table(summary)
    assert (tmp_path / "out" / "report" / "sweep.png").is_file()  # two rates: latency against load
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())
