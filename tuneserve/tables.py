"""The tables the CLI prints: what a stage returned or recorded, as rich tables."""

from rich.console import Console
from rich.table import Table

console = Console()


def print_facts(facts: dict) -> None:
    table = Table("fact", "value", show_header=False)
    for key, value in facts.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    console.print(table)


def print_models(aliases, imported: dict) -> None:
    table = Table("name", "path", "imported")
    for name in sorted(set(aliases) | set(imported)):
        path = imported.get(name)
        table.add_row(name, str(path or "-"), "yes" if path else "no (alias)")
    console.print(table)


def print_eval(results: dict, before: dict | None = None) -> None:
    """Per-task table of held-out scores; with `before`, each cell reads "base -> trained"."""
    columns = [("exact_match", "exact match"), ("perplexity", "perplexity"), ("preference_accuracy", "preference acc.")]
    shown = [(key, title) for key, title in columns if key in results]
    table = Table("task", "samples", *(title for _, title in shown), title="held-out evaluation")
    rows = [(name, r, (before or {}).get("tasks", {}).get(name)) for name, r in results.get("tasks", {}).items()]
    for name, r, b in [*rows, ("all", results, before)]:
        cells = [f"{b[key]:.3f} -> {r[key]:.3f}" if b and key in b else f"{r[key]:.3f}" for key, _ in shown]
        table.add_row(name, str(r["num_samples"]), *cells)
    console.print(table)


def print_detection(after: dict, before: dict | None = None) -> None:
    """A classifier's held-out detection table; with `before`, each cell reads "untrained -> trained"."""
    table = Table("held-out", "rate", title=f"classifier on {after['num_samples']} held-out samples (threshold {after['threshold']})")
    rows = [("accuracy", "accuracy"), ("detection_rate", "attacks detected"), ("false_positive_rate", "benign flagged")]
    for key, title in rows:
        table.add_row(title, f"{before[key]:.3f} -> {after[key]:.3f}" if before else f"{after[key]:.3f}")
    for style, rate in after["detection_by_style"].items():
        table.add_row(f"  {style} detected", f"{rate:.3f}")
    console.print(table)


def print_artifact(out, metrics: dict, show_other: bool = False) -> None:
    """What an artifact's manifest says it achieved (held-out scores or detection; with `show_other`,
    its other metrics as JSON), then its path."""
    if "detection_rate" in metrics.get("eval_after", {}):
        print_detection(metrics["eval_after"], metrics.get("eval_before"))
    for before, after in (("eval_before", "eval_after"), ("eval_student_before", "eval_student_after")):
        if after in metrics and "detection_rate" not in metrics[after]:
            print_eval(metrics[after], metrics.get(before))
    other = {k: v for k, v in metrics.items() if not k.startswith("eval_")}
    if show_other and other:
        console.print_json(data=other)
    console.print(str(out))


def print_forgetting(report: dict) -> None:
    table = Table("category", "base", "candidate", title=f"forgetting on the general suite ({report['num_items']} held-out items)")
    for name, row in report["categories"].items():
        table.add_row(name, f"{row['base']:.2f}", f"{row['candidate']:.2f}")
    em, ppl = report["exact_match"], report["base_answers_perplexity"]
    table.add_row("[b]exact match[/b]", f"{em['base']:.3f}", f"{em['candidate']:.3f}")
    table.add_row("perplexity of the base's answers", f"{ppl['base']:.2f}", f"{ppl['candidate']:.2f}")
    console.print(table)
    console.print(f"exact match lost: {report['exact_match_lost']:+.3f}; same answer as the base: {report['agreement_with_base']:.0%}")


def print_leaderboard(rows: list[dict]) -> None:
    table = Table("#", "model", "Bradley-Terry (95% CI)", "Elo", "battles", "W / T / L", title="arena leaderboard")
    for r in rows:
        table.add_row(str(r["rank"]), r["model"], f"{r['bradley_terry']:.0f} ({r['ci_low']:.0f} to {r['ci_high']:.0f})",
                      f"{r['elo']:.0f}", str(r["battles"]), f"{r['wins']} / {r['ties']} / {r['losses']}")
    console.print(table)


def print_estimate(rows) -> None:
    table = Table("bits", "weights GiB (rule)", "KV cache GiB", "total GiB", "weights GiB (16-bit embeddings)",
                  "weights GiB (measured)", "per device GiB")
    for r in rows:
        measured = "-" if r.measured_weights_gib is None else f"{r.measured_weights_gib:.3f}"
        table.add_row(str(r.bits), f"{r.weights_gib:.3f}", f"{r.kv_cache_gib:.3f}", f"{r.total_gib:.3f}", f"{r.layered_gib:.3f}",
                      measured, f"{r.per_device_gib:.3f} x {r.num_devices}")
    console.print(table)
