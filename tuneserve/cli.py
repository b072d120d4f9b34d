"""`tuneserve <stage> ...`: thin commands over the stage functions.

Each command's flags, help, YAML keys (`--config FILE`) and validation come from its options model
(tuneserve/options.py); a UserError from any stage is printed as one line, with exit code 2.
Heavy libraries (torch, vLLM, transformers, TRL) load inside the stages, so `--help` is quick.
"""

import datetime
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from tuneserve import tables
from tuneserve.artifacts import read_manifest
from tuneserve.bench import compare, format_comparison, markdown_table, parse_rule, run_bench, write_report
from tuneserve.bench.options import CompareOptions, ReportOptions, RunOptions, matrix_from
from tuneserve.bench.report import include_table, load_summary, refresh_summary
from tuneserve.errors import UserError
from tuneserve.evals.arena import ArenaClient, ArenaStore, ExactJudge, RewardJudge, judged_battles, leaderboard
from tuneserve.evals.options import ArenaOptions, ForgettingOptions, SuiteOptions
from tuneserve.evals.suites import forgetting_report, run_suite, suite_samples
from tuneserve.finetune import RUNNERS, Launch, run_eval
from tuneserve.finetune.options import FINETUNE_HELP, EvalOptions, TrainOptions
from tuneserve.finetune.recipe import load_recipe
from tuneserve.models import ALIASES, import_model, list_models, model_facts, resolve_model
from tuneserve.models.options import ImportOptions, ListOptions, ShowOptions
from tuneserve.optimize import run_distill, run_estimate, run_export, run_merge, run_prune, run_quantize
from tuneserve.optimize.options import (
    DistillOptions,
    EstimateOptions,
    ExportOptions,
    MergeOptions,
    PruneOptions,
    QuantizeOptions,
)
from tuneserve.options import command_from
from tuneserve.server import ServeConfig, serve_replicas
from tuneserve.server import serve as run_server

app = typer.Typer(help="Finetune, optimize, serve, bench and deploy LLMs.", no_args_is_help=True)
GROUPS = {
    "models": "Import, list and inspect models.",
    "finetune": "Train adapters from YAML recipes (SFT, DPO, ORPO, reward, classify, GRPO) and evaluate them.",
    "optimize": "Merge adapters, quantize, prune, distill draft models, export GGUF, estimate memory.",
    "bench": "Measure server settings side by side, report, and gate regressions.",
    "eval": "Suites, the forgetting report, and the arena leaderboard (automatic judges).",
}
groups = {name: typer.Typer(help=text, no_args_is_help=True) for name, text in GROUPS.items()}
for _name, _group in groups.items():
    app.add_typer(_group, name=_name)
console = Console()


def fail(message: str) -> None:
    # escape(): messages quote user input and paths, and "[x]" must not be read as markup.
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def command(group: typer.Typer, name: str, options: type, run, doc: str | None = None, positional: tuple[str, ...] = ()) -> None:
    """Register `name`: its flags from `options`, its help from `doc` (default: the model's docstring)."""
    group.command(name)(command_from(options, run, doc or options.__doc__, fail, positional))


# -- models ------------------------------------------------------------------------------------

command(groups["models"], "import", ImportOptions, lambda o: console.print(str(import_model(o.ref, force=o.force))), positional=("ref",))
command(groups["models"], "list", ListOptions, lambda o: tables.print_models(ALIASES, {p.name: p for p in list_models()}))


def models_show(o: ShowOptions) -> None:
    facts = model_facts(resolve_model(o.ref))
    console.print_json(facts.model_dump_json()) if o.as_json else tables.print_facts(facts.model_dump())


command(groups["models"], "show", ShowOptions, models_show, positional=("ref",))

# -- serve -------------------------------------------------------------------------------------

SERVE_DOC = """Serve a model behind an OpenAI-compatible API (vLLM in-process).

    Examples:
      tuneserve serve --model smollm2-135m-instruct --port 8000
      tuneserve serve --adapter dates=examples/adapters/dates --adapter-root runs --api-keys keys.yaml
      tuneserve serve --adapters-file examples/adapters.yaml
      tuneserve serve --adapter dates=examples/adapters/dates --playground --guard-model examples/adapters/guard
      tuneserve serve --replicas 2                   # two servers behind vLLM's router (cache-aware routing)
    """


def serve(settings: ServeConfig) -> None:
    try:
        exit_code = serve_replicas(settings) if settings.replicas > 1 else run_server(settings)
    except UserError:
        raise
    except Exception as e:  # vLLM's own start-up failures: one line, the traceback only when debugging
        if settings.log_level == "debug":
            raise
        text = str(e).strip() or repr(e)
        fail(f"the server could not start: {type(e).__name__}: {text.splitlines()[0][:500]} (--log-level debug shows the traceback)")
    raise typer.Exit(exit_code)


command(app, "serve", ServeConfig, serve, SERVE_DOC)

# -- finetune ----------------------------------------------------------------------------------


def finetune(method: str):
    def run(o: TrainOptions) -> None:
        launch = Launch(o.num_processes, o.config_file)
        recipe = load_recipe(o.recipe, method, o.set, output_dir=o.output_dir)
        out = RUNNERS[method](recipe, resume=o.resume, overwrite=o.overwrite, launch=launch)
        tables.print_artifact(out, read_manifest(out).metrics)

    return run


for _method, (_summary, _example) in FINETUNE_HELP.items():
    command(groups["finetune"], _method, TrainOptions, finetune(_method),
            f"{_summary}\n\n    Example: tuneserve finetune {_method} examples/recipes/{_example}\n    ", positional=("recipe",))
command(groups["finetune"], "eval", EvalOptions,
        lambda o: tables.print_eval(run_eval(o.model, o.adapter, o.task, o.data, o.data_type, o.num_samples)))

# -- eval --------------------------------------------------------------------------------------

command(groups["eval"], "suite", SuiteOptions, lambda o: tables.print_eval(run_suite(o.suite, o.model, o.adapter, o.num_samples)),
        positional=("suite",))


def eval_forgetting(o: ForgettingOptions) -> None:
    report = forgetting_report(o.model, o.adapter, o.candidate)
    tables.print_forgetting(report)
    if o.out is not None:
        o.out.write_text(json.dumps(report, indent=2) + "\n")


def eval_arena(o: ArenaOptions) -> None:
    if o.db is not None:
        return tables.print_leaderboard(leaderboard(ArenaStore(o.db).votes(o.only_judge)))
    judge = ExactJudge() if o.judge == "exact" else RewardJudge(o.judge.removeprefix("reward:"))
    samples = suite_samples(o.suite)
    arena = ArenaClient(o.server, o.api_key)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{o.num_battles} battles judged by {judge.name}", total=o.num_battles)
        judged_battles(arena, judge, samples, o.num_battles, o.models.split(",") if o.models else None,
                       on_battle=lambda n: progress.update(task, completed=n))
    tables.print_leaderboard(arena.leaderboard(o.only_judge))


command(groups["eval"], "forgetting", ForgettingOptions, eval_forgetting)
command(groups["eval"], "arena", ArenaOptions, eval_arena)

# -- optimize ----------------------------------------------------------------------------------

def optimized(run):
    def command(options) -> None:
        out = run(options)
        tables.print_artifact(out, read_manifest(out).metrics, show_other=True)

    return command


for _name, _options, _run in [("merge", MergeOptions, run_merge), ("quantize", QuantizeOptions, run_quantize),
                              ("prune", PruneOptions, run_prune), ("distill", DistillOptions, run_distill),
                              ("export", ExportOptions, run_export)]:
    command(groups["optimize"], _name, _options, optimized(_run))
command(groups["optimize"], "estimate", EstimateOptions, lambda o: tables.print_estimate(run_estimate(o)))

# -- bench -------------------------------------------------------------------------------------


def bench_run(o: RunOptions) -> None:
    matrix = matrix_from(o)
    out = o.out or Path("bench-results") / f"{matrix.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    run_bench(matrix, out, progress=lambda line: console.print(line, highlight=False), overwrite=o.overwrite)
    console.print(markdown_table(load_summary(out)), highlight=False, soft_wrap=True)
    console.print(f"report: {out / 'report' / 'index.html'}")


def bench_report(o: ReportOptions) -> None:
    if not (o.run_dir / "summary.json").is_file():
        fail(f"{o.run_dir} is not a bench result directory (no summary.json)")
    refresh_summary(o.run_dir)
    page = write_report(o.run_dir)
    summary = load_summary(o.run_dir)
    table = markdown_table(summary)
    console.print(table, highlight=False, soft_wrap=True)
    console.print(f"report: {page}")
    if o.into is not None:
        try:
            o.into.write_text(include_table(o.into.read_text(), summary["name"], table))
        except (OSError, ValueError) as e:
            fail(f"into {o.into}: {e}")


def bench_compare(o: CompareOptions) -> None:
    comparison = compare(o.a, o.b, [parse_rule(r) for r in o.fail_if])
    console.print(format_comparison(comparison), highlight=False, soft_wrap=True)
    for line in comparison.violations:
        Console(stderr=True, soft_wrap=True).print(f"[red]regression:[/red] {escape(line)}", highlight=False)
    raise typer.Exit(1 if comparison.violations else 0)


command(groups["bench"], "run", RunOptions, bench_run, positional=("matrix",))
command(groups["bench"], "report", ReportOptions, bench_report, positional=("run_dir",))
command(groups["bench"], "compare", CompareOptions, bench_compare, positional=("a", "b"))

if __name__ == "__main__":
    app()
