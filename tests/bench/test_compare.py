"""`tuneserve bench compare`: deltas, and the exit code CI gates on."""

import json
import subprocess
import sys

import pytest

from tuneserve.bench import compare, parse_rule


def write_result(path, label, **metrics):
    row = {"label": label, "output_throughput": 100.0, "p99_ttft_ms": 200.0, "failed": 0} | metrics
    path.write_text(json.dumps(row))
    return path


def write_run(run_dir, rows):
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"name": "run", "settings": rows}))
    return run_dir


def bench_compare(*args):
    return subprocess.run([sys.executable, "-m", "tuneserve", "bench", "compare", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_compare_exits_nonzero_on_a_synthetic_regression_and_zero_otherwise(tmp_path):
    a = write_result(tmp_path / "a.json", "base")
    slower = write_result(tmp_path / "b.json", "base", output_throughput=90.0)
    same = write_result(tmp_path / "c.json", "base", output_throughput=97.0, p99_ttft_ms=210.0)
    rules = ["--fail-if", "output_throughput<0.95x", "--fail-if", "p99_ttft_ms>1.10x"]
    failing = bench_compare(a, slower, *rules)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "output_throughput 100 -> 90" in failing.stderr and "p99_ttft_ms" not in failing.stderr
    passing = bench_compare(a, same, *rules)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "| base -> base | output_throughput | 100 | 97 | 0.970 |" in passing.stdout


def test_latency_rule_fails_on_its_own(tmp_path):
    a = write_result(tmp_path / "a.json", "x")
    b = write_result(tmp_path / "b.json", "x", p99_ttft_ms=260.0)
    result = compare(a, b, [parse_rule("output_throughput<0.95x"), parse_rule("p99_ttft_ms>1.10x")])
    assert result.violations == ["x -> x: p99_ttft_ms 200 -> 260 (fails p99_ttft_ms>1.1x)"]


def test_runs_compare_setting_by_setting_and_absolute_rules_work(tmp_path):
    a = write_run(tmp_path / "a", [{"label": "bf16", "output_throughput": 100.0, "failed": 0},
                                   {"label": "w4a16", "output_throughput": 80.0, "failed": 0}])
    b = write_run(tmp_path / "b", [{"label": "bf16", "output_throughput": 101.0, "failed": 0},
                                   {"label": "w4a16", "output_throughput": 81.0, "failed": 2}])
    result = compare(a, b, [parse_rule("failed>0"), parse_rule("output_throughput<0.95x")])
    assert result.violations == ["w4a16: failed 0 -> 2 (fails failed>0)"]


def test_bad_rules_and_files_are_one_line_errors(tmp_path):
    a = write_result(tmp_path / "a.json", "x")
    bad_rule = bench_compare(a, a, "--fail-if", "throughput is lower")
    assert bad_rule.returncode == 2 and "expected METRIC<VALUE[x]" in bad_rule.stderr
    unknown = bench_compare(a, a, "--fail-if", "nonsense_ms>1.1x")
    assert unknown.returncode == 2 and "no numeric 'nonsense_ms'" in unknown.stderr
    missing = bench_compare(a, tmp_path / "missing.json")
    assert missing.returncode == 2 and "cannot read bench result" in missing.stderr
    assert "Traceback" not in bad_rule.stderr + unknown.stderr + missing.stderr


@pytest.mark.parametrize("rule", ["output_throughput<0.95x", "p99_ttft_ms >= 300", "failed>0"])
def test_rules_round_trip(rule):
    assert str(parse_rule(rule)).replace(" ", "") == rule.replace(" ", "").replace("300", "300")


def test_a_setting_that_failed_or_is_missing_in_b_fails_the_gate(tmp_path):
    """A gate must not pass because the candidate never ran (it dropped such settings: exit 0)."""
    rows = [{"label": "bf16", "output_throughput": 100.0, "failed": 0}, {"label": "w4a16", "output_throughput": 80.0, "failed": 0}]
    a = write_run(tmp_path / "a", rows)
    b_failed = write_run(tmp_path / "b", [rows[0], {"label": "w4a16", "error": "server exited with 2: --kv-cache-gib 100000"}])
    b_missing = write_run(tmp_path / "c", [rows[0]])
    failed = bench_compare(a, b_failed, "--fail-if", "failed>0")
    assert failed.returncode == 1 and "w4a16: failed in B (server exited with 2" in failed.stderr
    missing = bench_compare(a, b_missing, "--fail-if", "failed>0")
    assert missing.returncode == 1 and "w4a16: missing in B" in missing.stderr
    assert bench_compare(a, a, "--fail-if", "failed>0").returncode == 0
