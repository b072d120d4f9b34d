"""The bench report: a markdown table, PNG plots and one self-contained HTML page per run."""

import base64
import html
import json
import math
from pathlib import Path

from tuneserve.bench.environment import describe
from tuneserve.bench.errors import BenchError
from tuneserve.bench.metrics import RequestResult, server_medians, slug, tpot_s

COLUMNS = (  # (result key, header, format)
    ("request_throughput", "req/s", "{:.2f}"),
    ("output_throughput", "output tok/s", "{:.1f}"),
    ("median_ttft_ms", "median TTFT ms", "{:.0f}"),
    ("median_tpot_ms", "median TPOT ms", "{:.1f}"),
    ("p99_ttft_ms", "p99 TTFT ms", "{:.0f}"),
)


def load_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def _cell(setting: dict, key: str, fmt: str) -> str:
    if key not in setting:
        return "-"
    spread = setting.get("spread", {}).get(key)
    text = fmt.format(setting[key])
    if spread and setting.get("repeat", 1) > 1:
        text += f" ({fmt.format(spread['min'])}-{fmt.format(spread['max'])})"
    return text


# Columns shown when any setting has them: (key, header, format).
OPTIONAL = (
    ("prefix_cache_hit_rate", "prefix hits", "{:.0%}"), ("cached_prompt_share", "cached prompt", "{:.0%}"),
    ("spec_decode_acceptance_rate", "draft accepted", "{:.0%}"), ("adapter_hit_rate", "adapter hits", "{:.0%}"),
    ("adapter_loads", "adapter loads", "{:.0f}"), ("median_ttft_cold_ms", "cold TTFT ms", "{:.0f}"),
    ("median_ttft_warm_ms", "warm TTFT ms", "{:.0f}"),
)


def markdown_table(summary: dict) -> str:
    """Median (min-max over repeats) per setting, and output throughput as a ratio of the first row.
    Prefix-cache hits and draft acceptance get a column when any setting has them."""
    settings = summary["settings"]
    reference = next((s.get("output_throughput") for s in settings if s.get("output_throughput")), None)
    optional = [(k, h, f) for k, h, f in OPTIONAL if any(s.get(k) for s in settings)]
    header = ["setting", *(h for _, h, _ in COLUMNS), "vs first", *(h for _, h, _ in optional), "failed", "peak RSS GiB",
              "start s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in settings:
        if "error" in s:
            lines.append(f"| {s['label']} | did not start: {s['error'].splitlines()[0][:80]} |" + " |" * (len(header) - 2))
            continue
        ratio = f"{s['output_throughput'] / reference:.2f}x" if reference else "-"
        startup = s.get("startup_s")
        extra = [f.format(s[k]) if s.get(k) is not None else "-" for k, _, f in optional]
        cells = [s["label"], *(_cell(s, k, f) for k, _, f in COLUMNS), ratio, *extra, f"{s.get('failed', 0):.0f}",
                 _gib(s.get("peak_rss_bytes")), "-" if startup is None else f"{startup:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    env = summary.get("environment")
    matrix = summary.get("matrix", {})
    repeat, rounds = matrix.get("repeat", 1), matrix.get("rounds", 1)
    runs = f"{repeat * rounds} runs ({rounds} rounds of {repeat}, settings interleaved)" if rounds > 1 else f"{repeat} runs"
    if env:
        lines.append(f"\n{summary['name']}: median of {runs} (min-max); {describe(env)}.")
    return "\n".join(lines)


def _gib(num_bytes: int | None) -> str:
    """Peak memory in GiB; "-" when bench did not start the server (a --url run cannot see it)."""
    return f"{num_bytes / (1 << 30):.2f}" if num_bytes else "-"


def _results(run_dir: Path) -> list[dict]:

    summary = load_summary(run_dir)
    results = []
    for s in summary["settings"]:
        path = Path(run_dir) / f"{slug(s['label'])}.json"
        if "error" not in s and path.is_file():
            results.append(json.loads(path.read_text()))
    return results


def write_plots(run_dir: Path, out: Path) -> list[Path]:
    """throughput.png, ttft.png (medians with min-max bars), latency.png (distributions),
    and sweep.png (TTFT/TPOT against request rate) when several rates were measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, results = load_summary(run_dir), _results(run_dir)
    if not results:
        return []
    subtitle = describe(summary["environment"])
    labels = [r["label"] for r in results]
    paths = []
    for key, title, name in (("output_throughput", "output tokens/s", "throughput"), ("median_ttft_ms", "median TTFT (ms)", "ttft")):
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(results) + 1.8))
        medians = [r[key] for r in results]
        errors = [[m - r["spread"][key]["min"] for m, r in zip(medians, results, strict=True)],
                  [r["spread"][key]["max"] - m for m, r in zip(medians, results, strict=True)]]
        ax.barh(labels, medians, xerr=errors, color="#4C72B0", capsize=4)
        ax.invert_yaxis()
        ax.set_xlabel(f"{title}: median of {summary['matrix']['repeat']} runs, bars min-max")
        ax.set_title(f"{summary['name']}: {title}\n{subtitle}", fontsize=9)
        paths.append(_save(fig, out / f"{name}.png"))
    paths.append(_latency_plot(plt, results, summary, subtitle, out))
    if any(len(r["rates"]) > 1 for r in results):
        paths.append(_sweep_plot(plt, results, summary, subtitle, out))
    return paths


def _latency_plot(plt, results, summary, subtitle, out: Path) -> Path:

    fig, (ax_ttft, ax_tpot) = plt.subplots(1, 2, figsize=(11, 0.5 * len(results) + 2))
    ttfts, tpots = [], []
    for r in results:
        requests = [RequestResult(**q) for rep in r["rates"][0]["repeats"] for q in rep["requests"] if q["success"]]
        ttfts.append([q.ttft_s * 1000 for q in requests] or [0])
        tpots.append([tpot_s(q) * 1000 for q in requests if q.output_tokens > 1] or [0])
    labels = [r["label"] for r in results]
    ax_ttft.boxplot(ttfts, vert=False, tick_labels=labels)
    ax_tpot.boxplot(tpots, vert=False, tick_labels=labels)
    ax_tpot.set_yticklabels([])
    for ax in (ax_ttft, ax_tpot):
        ax.invert_yaxis()
    ax_ttft.set_xlabel("TTFT per request (ms)")
    ax_tpot.set_xlabel("TPOT per request (ms)")
    fig.suptitle(f"{summary['name']}: latency distributions, all repeats\n{subtitle}", fontsize=9)
    return _save(fig, out / "latency.png")


def _sweep_plot(plt, results, summary, subtitle, out: Path) -> Path:
    fig, (ax_ttft, ax_tpot) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        rates = [x for x in r["rates"] if x["request_rate"] != "inf" and not _is_inf(x["request_rate"])]
        xs = [x["request_rate"] for x in rates]
        ax_ttft.plot(xs, [x["summary"]["median_ttft_ms"]["median"] for x in rates], marker="o", label=r["label"])
        ax_tpot.plot(xs, [x["summary"]["median_tpot_ms"]["median"] for x in rates], marker="o", label=r["label"])
    ax_ttft.set_xlabel("request rate (req/s)")
    ax_ttft.set_ylabel("median TTFT (ms)")
    ax_tpot.set_xlabel("request rate (req/s)")
    ax_tpot.set_ylabel("median TPOT (ms)")
    ax_ttft.legend(fontsize=7)
    fig.suptitle(f"{summary['name']}: latency against load\n{subtitle}", fontsize=9)
    return _save(fig, out / "sweep.png")


def _is_inf(value) -> bool:
    return isinstance(value, float) and math.isinf(value)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def include_table(text: str, name: str, table: str) -> str:
    """`text` with the block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` replaced by
    `table`, so a document shows a run's table as the run printed it (never copied by hand)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise BenchError(f"expected one {start} ... {end} block")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{table}\n{end}{tail}"


def refresh_summary(run_dir: Path) -> None:
    """Re-derive the summary's per-setting figures from the setting JSONs (raw repeats), so a
    report made by a newer tuneserve shows what it computes from runs recorded by an older one."""

    summary = load_summary(run_dir)
    by_label = {r["label"]: r for r in _results(run_dir)}
    for row in summary["settings"]:
        if row["label"] in by_label:
            result = by_label[row["label"]]
            row.update(server_medians(result["rates"][0], result.get("rounds", 1)))
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def write_report(run_dir: Path) -> Path:
    """report/index.html (self-contained: images inlined), its PNGs and table.md."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    summary = load_summary(run_dir)
    table = markdown_table(summary)
    (out / "table.md").write_text(table + "\n")
    images = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in write_plots(run_dir, out)
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(summary['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}img{{max-width:100%;display:block;margin:1em 0}}</style>
</head><body><h1>{html.escape(summary['name'])}</h1>{_html_table(table)}{images}</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _html_table(markdown: str) -> str:
    rows, notes = [], []
    for line in markdown.splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if not rows else "td"
            rows.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.strip():
            notes.append(f"<p>{html.escape(line)}</p>")
    return "<table>" + "".join(rows) + "</table>" + "".join(notes)
