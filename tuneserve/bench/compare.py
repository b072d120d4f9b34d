"""`tuneserve bench compare A B --fail-if "output_throughput<0.95x"`: deltas, and an exit code for CI.

A and B are a setting's result JSON, a run's summary.json or a run directory; runs are matched
setting by setting (by label). vLLM `bench serve` result files compare too (same keys). With any
--fail-if rule, a setting of A that failed (its server never started, say) or is missing in B is
a violation too: a regression gate must not pass because the candidate never ran.
"""

import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path

from tuneserve.bench.errors import BenchError

RULE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*(x?)\s*$")
SHOWN = ("request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
         "p99_tpot_ms", "median_e2el_ms", "failed")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Rule:
    """Fail when B's `metric` `op` `value` (times A's metric when `is_ratio`)."""

    metric: str
    op: str
    value: float
    is_ratio: bool

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'x' if self.is_ratio else ''}"

    def is_violated(self, a: float, b: float) -> bool:
        limit = self.value * a if self.is_ratio else self.value
        return OPS[self.op](b, limit)


def parse_rule(text: str) -> Rule:
    """`output_throughput<0.95x` (relative to A) or `failed>0` (absolute)."""
    match = RULE.match(text)
    if not match:
        raise BenchError(f"fail_if {text!r}: expected METRIC<VALUE[x] or METRIC>VALUE[x], e.g. output_throughput<0.95x")
    metric, op, value, x = match.groups()
    try:
        return Rule(metric, op, float(value), bool(x))
    except ValueError:
        raise BenchError(f"fail_if {text!r}: {value!r} is not a number") from None


def load_results(path: Path) -> dict[str, dict]:
    """label -> result, from a run directory, a summary.json or one result JSON."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read bench result {path}: {e}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path} is not a bench result (expected a JSON object)")
    rows = data["settings"] if "settings" in data else [data]
    return {row.get("label") or path.stem: row for row in rows}


@dataclass
class Comparison:
    rows: list[tuple[str, str, float | None, float | None]]  # label, metric, a, b
    violations: list[str]


def compare(a_path: Path, b_path: Path, rules: list[Rule]) -> Comparison:
    a, b = load_results(a_path), load_results(b_path)
    if len(a) == 1 and len(b) == 1:  # two single results: compare them whatever their labels
        pairs = [(f"{next(iter(a))} -> {next(iter(b))}", *a.values(), *b.values())]
    else:
        pairs = [(label, a[label], b[label]) for label in a if label in b]
    if not pairs:
        raise BenchError(f"no setting is in both results: {sorted(a)} vs {sorted(b)}")
    rows, violations = [], []
    for label in (label for label, ra in a.items() if "error" not in ra and rules):
        if len(a) > 1 and label not in b:
            violations.append(f"{label}: missing in B")
    for label, ra, rb in pairs:
        if "error" in ra:  # the baseline never ran: nothing to compare with
            continue
        if "error" in rb:
            if rules:
                violations.append(f"{label}: failed in B ({str(rb['error'])[:200]})")
            continue
        for metric in dict.fromkeys([*SHOWN, *(r.metric for r in rules)]):
            rows.append((label, metric, ra.get(metric), rb.get(metric)))
        for rule in rules:
            if not isinstance(ra.get(rule.metric), (int, float)) or not isinstance(rb.get(rule.metric), (int, float)):
                raise BenchError(f"fail_if {rule}: no numeric {rule.metric!r} in the results of {label!r}")
            if rule.is_violated(ra[rule.metric], rb[rule.metric]):
                violations.append(f"{label}: {rule.metric} {ra[rule.metric]:.4g} -> {rb[rule.metric]:.4g} (fails {rule})")
    return Comparison(rows, violations)


def format_comparison(comparison: Comparison) -> str:
    lines = ["| setting | metric | A | B | B/A |", "|---|---|---|---|---|"]
    for label, metric, a, b in comparison.rows:
        if a is None and b is None:
            continue
        ratio = f"{b / a:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-"
        lines.append(f"| {label} | {metric} | {_num(a)} | {_num(b)} | {ratio} |")
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"
