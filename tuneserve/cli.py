"""`tuneserve <stage> ...`: thin commands over the stage functions (heavy imports stay inside)."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Finetune, optimize, serve, bench and deploy LLMs.", no_args_is_help=True)
models_app = typer.Typer(help="Import, list and inspect models.", no_args_is_help=True)
finetune_app = typer.Typer(help="Train adapters from YAML recipes (SFT, DPO, ORPO, reward, classify) and evaluate them.", no_args_is_help=True)
app.add_typer(models_app, name="models")
optimize_app = typer.Typer(help="Merge adapters, quantize, prune, distill draft models, export GGUF, estimate memory.", no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")
app.add_typer(optimize_app, name="optimize")
bench_app = typer.Typer(help="Measure server settings side by side, report, and gate regressions.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
eval_app = typer.Typer(help="Suites, the forgetting report, and the arena leaderboard (automatic judges).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
console = Console()


def fail(message: str) -> None:
    from rich.markup import escape

    # escape(): messages quote user input and paths, and "[x]" must not be read as markup.
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(2)


@models_app.command("import")
def models_import(
    ref: Annotated[str, typer.Argument(help="Alias (e.g. smollm2-135m-instruct) or a .gguf file.")] = "smollm2-135m-instruct",
    force: Annotated[bool, typer.Option(help="Convert again even if already imported.")] = False,
):
    """Convert a model once into $TUNESERVE_HOME/models (idempotent).

    Example: tuneserve models import smollm2-135m-instruct
    """
    from tuneserve.models import ModelError, import_model

    try:
        console.print(str(import_model(ref, force=force)))
    except ModelError as e:
        fail(str(e))


@models_app.command("list")
def models_list():
    """List imported models.

    Example: tuneserve models list
    """
    from tuneserve.models import ALIASES, list_models

    table = Table("name", "path", "imported")
    imported = {p.name: p for p in list_models()}
    for name in sorted(set(ALIASES) | set(imported)):
        path = imported.get(name)
        table.add_row(name, str(path or "-"), "yes" if path else "no (alias)")
    console.print(table)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="Any model reference.")] = "smollm2-135m-instruct",
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Print a model's parameters, layers, dimensions, context length, dtype and size on disk.

    Example: tuneserve models show smollm2-135m-instruct
    """
    from tuneserve.models import ModelError, model_facts, resolve_model

    try:
        facts = model_facts(resolve_model(ref))
    except ModelError as e:
        fail(str(e))
    if json_output:
        console.print_json(facts.model_dump_json())
        return
    table = Table("fact", "value", show_header=False)
    for key, value in facts.model_dump().items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    console.print(table)


SERVE_DOC = """Serve a model behind an OpenAI-compatible API (vLLM in-process).

    Examples:
      tuneserve serve --model smollm2-135m-instruct --port 8000
      tuneserve serve --adapter dates=examples/adapters/dates --adapter-root runs --api-keys keys.yaml
      tuneserve serve --adapters-file examples/adapters.yaml
      tuneserve serve --adapter dates=examples/adapters/dates --playground --guard-model examples/adapters/guard
    """


def run_serve(settings) -> None:
    from tuneserve.models import ModelError
    from tuneserve.server import serve as run_server
    from tuneserve.server.startup import StartupError

    try:
        exit_code = run_server(settings)
    except (ModelError, StartupError) as e:
        fail(str(e))
    except Exception as e:  # vLLM's own start-up failures: one line, the traceback only when debugging
        if settings.log_level == "debug":
            raise
        fail(f"the server could not start: {type(e).__name__}: {first_line(e)} (--log-level debug shows the traceback)")
    raise typer.Exit(exit_code)


def _serve_command():
    from tuneserve.options import command_from
    from tuneserve.server.config import ServeConfig

    app.command("serve")(command_from(ServeConfig, run_serve, SERVE_DOC, fail))


_serve_command()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return text.splitlines()[0][:500]


RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML (see examples/recipes/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: --set lora_r=8 (repeatable).")]
OutOpt = Annotated[str | None, typer.Option(help="Where to write the adapter (overrides output_dir).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the last checkpoint of an interrupted run.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing output_dir.")]
ProcessesOpt = Annotated[int, typer.Option(help="Train on N processes under `accelerate launch` (DDP; gloo on CPU).")]
AccelerateOpt = Annotated[Path | None, typer.Option(help="Accelerate config (FSDP, DeepSpeed, several nodes; see examples/accelerate/).")]


def _finetune(method: str, recipe: Path, sets: list[str] | None, output_dir: str | None, resume: bool, overwrite: bool,
              num_processes: int = 1, config_file: Path | None = None) -> None:
    from tuneserve.config import ConfigError
    from tuneserve.finetune import RUNNERS, DataError, Launch
    from tuneserve.finetune.launch import LaunchError
    from tuneserve.finetune.recipe import load_recipe
    from tuneserve.models import ModelError

    try:
        launch = Launch(num_processes, config_file)
        loaded = load_recipe(recipe, method, sets or [], output_dir=output_dir)
        out = RUNNERS[method](loaded, resume=resume, overwrite=overwrite, launch=launch)
    except (ConfigError, DataError, ModelError, FileExistsError, FileNotFoundError, LaunchError) as e:
        fail(str(e))
    from tuneserve.artifacts import read_manifest

    metrics = read_manifest(out).metrics
    if "detection_rate" in metrics.get("eval_after", {}):
        print_detection(metrics["eval_after"], metrics.get("eval_before"))
    elif "eval_after" in metrics:
        print_eval(metrics["eval_after"], metrics.get("eval_before"))
    console.print(str(out))


def print_detection(after: dict, before: dict | None = None) -> None:
    """A classifier's held-out detection table; with `before`, each cell reads "untrained -> trained"."""
    table = Table("held-out", "rate", title=f"classifier on {after['num_samples']} held-out samples (threshold {after['threshold']})")
    rows = [("accuracy", "accuracy"), ("detection_rate", "attacks detected"), ("false_positive_rate", "benign flagged")]
    for key, title in rows:
        table.add_row(title, f"{before[key]:.3f} -> {after[key]:.3f}" if before else f"{after[key]:.3f}")
    for style, rate in after["detection_by_style"].items():
        table.add_row(f"  {style} detected", f"{rate:.3f}")
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


FINETUNE_HELP = {
    "sft": ("Supervised finetuning (LoRA, QLoRA or full).", "qlora-demo.yaml --set max_steps=20"),
    "dpo": ("Direct preference optimization on prompt/chosen/rejected data.", "dpo-demo.yaml"),
    "orpo": ("Odds-ratio preference optimization (no reference model).", "orpo-demo.yaml"),
    "reward": ("Reward model (one-logit head + LoRA) on preference data.", "reward-demo.yaml"),
    "classify": ("Sequence-classification LoRA (PEFT SEQ_CLS) on text/label data, e.g. the prompt-injection guard.", "classify-guard.yaml"),
    "grpo": ("GRPO: sample answers to prompts, reward them (exact check or a reward model), optimize; from the base or an SFT adapter.",
             "grpo-extract.yaml"),
}


def _finetune_command(method: str):
    summary, example = FINETUNE_HELP[method]

    def command(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutOpt = None, resume: ResumeOpt = False,
                overwrite: OverwriteOpt = False, num_processes: ProcessesOpt = 1, config_file: AccelerateOpt = None):
        _finetune(method, recipe, set_, output_dir, resume, overwrite, num_processes, config_file)

    command.__doc__ = f"{summary}\n\n    Example: tuneserve finetune {method} examples/recipes/{example}\n    "
    finetune_app.command(method)(command)


for _method in FINETUNE_HELP:
    _finetune_command(_method)


@finetune_app.command("eval")
def finetune_eval(
    model: Annotated[str | None, typer.Option(help="Base model reference (default smollm2-135m-instruct).")] = None,
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter directory to apply.")] = None,
    task: Annotated[str | None, typer.Option(help="Demo task: all, dates, units, extract, arithmetic.")] = None,
    data: Annotated[str | None, typer.Option(help="JSONL file with reference answers instead of a demo task.")] = None,
    data_type: Annotated[str | None, typer.Option(help="Type of --data: alpaca, messages or preference.")] = None,
    num_samples: Annotated[int, typer.Option(help="Demo samples per task.")] = 50,
):
    """Held-out exact match, perplexity (and preference accuracy for pairs), through vLLM.

    Example: tuneserve finetune eval --adapter runs/qlora-demo --task all
    """
    from tuneserve.finetune import DataError, run_eval
    from tuneserve.models import ModelError

    if task and data:
        fail("give --task or --data, not both")
    try:
        results = run_eval(model, adapter, task, data, data_type, num_samples)
    except (DataError, ModelError) as e:
        fail(str(e))
    print_eval(results)


@eval_app.command("suite")
def eval_suite(
    suite: Annotated[str, typer.Argument(help="demo (the demo tasks) or general (facts and instructions).")] = "general",
    model: Annotated[str | None, typer.Option(help="Base model reference (default smollm2-135m-instruct).")] = None,
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter directory to apply.")] = None,
    num_samples: Annotated[int, typer.Option(help="demo: samples per task.")] = 50,
):
    """A named suite's held-out scores (exact match, perplexity) for a model or model + adapter, through vLLM.

    Example: tuneserve eval suite general --adapter examples/adapters/dates
    """
    from tuneserve.data import DataError
    from tuneserve.evals.suites import run_suite
    from tuneserve.models import ModelError

    try:
        results = run_suite(suite, model, adapter, num_samples)
    except (DataError, ModelError) as e:
        fail(str(e))
    print_eval(results)


@eval_app.command("forgetting")
def eval_forgetting(
    adapter: Annotated[str | None, typer.Option(help="Adapter directory, scored on its base.")] = None,
    candidate: Annotated[str | None, typer.Option(help="Or a model (merged, quantized, distilled) to compare with the base.")] = None,
    model: Annotated[str | None, typer.Option(help="The base model reference (default smollm2-135m-instruct).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the report as JSON here.")] = None,
):
    """What a finetuned model lost on the general suite against its base.

    Reports exact match on checkable answers (base vs candidate), the perplexity of the base's own
    greedy answers under each, agreement with the base, per category, and examples of answers lost.
    The report is also stored in the adapter's (or model's) tuneserve.json under metrics.forgetting.

    Example: tuneserve eval forgetting --adapter examples/adapters/dates
    """
    import json

    from tuneserve.data import DataError
    from tuneserve.evals.suites import forgetting_report
    from tuneserve.models import ModelError

    try:
        report = forgetting_report(model, adapter, candidate)
    except (DataError, ModelError) as e:
        fail(str(e))
    table = Table("category", "base", "candidate", title=f"forgetting on the general suite ({report['num_items']} held-out items)")
    for name, row in report["categories"].items():
        table.add_row(name, f"{row['base']:.2f}", f"{row['candidate']:.2f}")
    em, ppl = report["exact_match"], report["base_answers_perplexity"]
    table.add_row("[b]exact match[/b]", f"{em['base']:.3f}", f"{em['candidate']:.3f}")
    table.add_row("perplexity of the base's answers", f"{ppl['base']:.2f}", f"{ppl['candidate']:.2f}")
    console.print(table)
    console.print(f"exact match lost: {report['exact_match_lost']:+.3f}; same answer as the base: {report['agreement_with_base']:.0%}")
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")


@eval_app.command("arena")
def eval_arena(
    server: Annotated[str | None, typer.Option(help="A server started with --playground: run judged battles there.")] = None,
    api_key: Annotated[str | None, typer.Option(help="Key for --server.", envvar="TUNESERVE_API_KEY")] = None,
    judge: Annotated[str, typer.Option(help="exact (checkable answers of --suite) or reward:DIR (a `finetune reward` model).")] = "exact",
    suite: Annotated[str, typer.Option(help="Prompts for the battles: demo or general.")] = "demo",
    models: Annotated[str | None, typer.Option(help="Comma-separated models to pit (default: the server picks among all).")] = None,
    num_battles: Annotated[int, typer.Option(help="Judged battles to run (0: only print the leaderboard).")] = 40,
    db: Annotated[Path | None, typer.Option(help="Without --server: print the leaderboard of this arena SQLite file.")] = None,
    only_judge: Annotated[str | None, typer.Option(help="Rate only the votes of this judge (human, exact, reward).")] = None,
):
    """Battles without people (an automatic judge votes), then the leaderboard: Bradley-Terry with
    95% bootstrap intervals and Elo, as Chatbot Arena computes them.

    Examples:
      tuneserve eval arena --server http://127.0.0.1:8000 --judge exact --suite demo --num-battles 60
      tuneserve eval arena --db ~/.cache/tuneserve/arena.sqlite
    """
    import random

    from rich.progress import Progress

    from tuneserve.data import DataError
    from tuneserve.evals.arena import ArenaError, ArenaStore, ExactJudge, RewardJudge, leaderboard
    from tuneserve.evals.suites import suite_samples
    from tuneserve.models import ModelError

    if (server is None) == (db is None):
        fail("give --server (run battles there) or --db (print a stored leaderboard)")
    if server is None:
        if not db.is_file():
            fail(f"--db {db}: no such file")
        print_leaderboard(leaderboard(ArenaStore(db).votes(only_judge)))
        return
    try:
        picked = ExactJudge() if judge == "exact" else RewardJudge(judge.removeprefix("reward:")) if judge.startswith("reward:") else None
        if picked is None:
            fail(f"--judge {judge!r}: use exact or reward:DIR")
        samples = suite_samples(suite)
        random.Random(0).shuffle(samples)
        from tuneserve.evals.arena import judged_battles

        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{num_battles} battles judged by {picked.name}", total=num_battles)
            judged_battles(server.rstrip("/"), api_key, picked, samples, num_battles, models.split(",") if models else None,
                           on_battle=lambda n: progress.update(task, completed=n))
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        params = {"judge": only_judge} if only_judge else {}
        board = httpx.get(f"{server.rstrip('/')}/v1/arena/leaderboard", headers=headers, params=params, timeout=120).json()
    except (ArenaError, DataError, ModelError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"--server {server}: {e}")
    print_leaderboard(board["data"])


def print_leaderboard(rows: list[dict]) -> None:
    table = Table("#", "model", "Bradley-Terry (95% CI)", "Elo", "battles", "W / T / L", title="arena leaderboard")
    for r in rows:
        table.add_row(str(r["rank"]), r["model"], f"{r['bradley_terry']:.0f} ({r['ci_low']:.0f} to {r['ci_high']:.0f})",
                      f"{r['elo']:.0f}", str(r["battles"]), f"{r['wins']} / {r['ties']} / {r['losses']}")
    console.print(table)


def _optimize(run, *args, **kwargs):
    """Call an optimize stage; bad input becomes a one-line error and exit code 2."""
    from tuneserve.finetune import DataError
    from tuneserve.models import ModelError
    from tuneserve.optimize import OptimizeError

    try:
        return run(*args, **kwargs)
    except (OptimizeError, DataError, ModelError, FileExistsError) as e:
        fail(str(e))


def _print_manifest_metrics(out) -> None:
    from tuneserve.artifacts import read_manifest

    metrics = read_manifest(out).metrics
    for before, after in (("eval_before", "eval_after"), ("eval_student_before", "eval_student_after")):
        if after in metrics:
            print_eval(metrics[after], metrics.get(before))
    other = {k: v for k, v in metrics.items() if not k.startswith("eval_")}
    if other:
        console.print_json(data=other)
    console.print(str(out))


Overwrite = Annotated[bool, typer.Option(help="Replace an existing output directory.")]


@optimize_app.command("merge")
def optimize_merge(
    adapter: Annotated[str, typer.Option(help="PEFT adapter directory.")],
    out: Annotated[str, typer.Option(help="Output directory for the merged model.")],
    base: Annotated[str | None, typer.Option(help="Base model (default: the one in the adapter's manifest).")] = None,
    mode: Annotated[str | None, typer.Option(help="dequantized (QLoRA default) or original.")] = None,
    overwrite: Overwrite = False,
):
    """Fold an adapter into a full bf16 model and report logit/greedy parity.

    Example: tuneserve optimize merge --adapter runs/qlora-demo --out runs/merged
    """
    from tuneserve.optimize import run_merge

    if mode not in (None, "dequantized", "original"):
        fail(f"--mode must be dequantized or original, got {mode}")
    _print_manifest_metrics(_optimize(run_merge, adapter, out, base, mode, overwrite))


@optimize_app.command("quantize")
def optimize_quantize(
    out: Annotated[str, typer.Option(help="Output directory (compressed-tensors).")],
    model: Annotated[str | None, typer.Option(help="Model reference (default smollm2-135m-instruct).")] = None,
    scheme: Annotated[str, typer.Option(help="w4a16 (GPTQ) or w8a8 (SmoothQuant + GPTQ).")] = "w4a16",
    calibration: Annotated[str, typer.Option(help="Demo task (all, dates, ...) or a JSONL file.")] = "all",
    samples: Annotated[int, typer.Option(help="Calibration samples.")] = 128,
    eval_samples: Annotated[int, typer.Option(help="Held-out demo samples per task for before/after quality (0: skip).")] = 50,
    overwrite: Overwrite = False,
):
    """Quantize with llm-compressor; report size, perplexity and demo accuracy before and after.

    Example: tuneserve optimize quantize --scheme w4a16 --out runs/smollm2-w4a16
    """
    from tuneserve.optimize import run_quantize

    if scheme not in ("w4a16", "w8a8"):
        fail(f"--scheme must be w4a16 or w8a8, got {scheme}")
    _print_manifest_metrics(_optimize(run_quantize, model, out, scheme, calibration, samples, eval_samples, overwrite))


@optimize_app.command("prune")
def optimize_prune(
    out: Annotated[str, typer.Option(help="Output directory (a model vLLM serves).")],
    model: Annotated[str | None, typer.Option(help="Model reference (default smollm2-135m-instruct).")] = None,
    structure: Annotated[str, typer.Option(help="N:M (2:4: two of every four weights zero) or unstructured.")] = "2:4",
    sparsity: Annotated[float | None, typer.Option(help="Fraction of weights to zero (unstructured; N:M implies N/M).")] = None,
    quantize: Annotated[str | None, typer.Option(help="Then quantize: w4a16 or w8a8 (rounding, which keeps the zeros).")] = None,
    calibration: Annotated[str, typer.Option(help="Demo task (all, dates, ...) or a JSONL file.")] = "all",
    samples: Annotated[int, typer.Option(help="Calibration samples.")] = 128,
    eval_samples: Annotated[int, typer.Option(help="Held-out demo samples per task for before/after quality (0: skip).")] = 50,
    overwrite: Overwrite = False,
):
    """Prune with SparseGPT (llm-compressor); report the zeros written, size, perplexity and demo accuracy.

    Example: tuneserve optimize prune --structure 2:4 --out runs/smollm2-2of4
             tuneserve optimize prune --structure unstructured --sparsity 0.3 --quantize w4a16 --out runs/smollm2-s30-w4a16
    """
    from tuneserve.optimize import run_prune

    _print_manifest_metrics(_optimize(run_prune, model, out, structure, sparsity, quantize, calibration, samples, eval_samples, overwrite))


@optimize_app.command("export")
def optimize_export(
    out: Annotated[str, typer.Option(help="Output directory: model.gguf, Modelfile, tuneserve.json.")],
    model: Annotated[str | None, typer.Option(help="Model to export, e.g. a merged adapter (default smollm2-135m-instruct).")] = None,
    format: Annotated[str, typer.Option("--format", help="gguf (llama.cpp, Ollama, LM Studio).")] = "gguf",
    type: Annotated[str, typer.Option("--type", help="f16, bf16, q8_0 or f32.")] = "f16",
    check: Annotated[bool, typer.Option("--check/--no-check", help="Load the file back with transformers and compare with the source.")] = True,
    overwrite: Overwrite = False,
):
    """Export to GGUF with an Ollama Modelfile, then load it back and report parity with the source.

    Example: tuneserve optimize merge --adapter examples/adapters/dates --out runs/dates-merged
             tuneserve optimize export --model runs/dates-merged --out runs/dates-gguf --type q8_0
             ollama create dates -f runs/dates-gguf/Modelfile
    """
    from tuneserve.optimize.export import run_export

    if format != "gguf":
        fail(f"--format must be gguf, got {format}")
    if type not in ("f16", "bf16", "q8_0", "f32"):
        fail(f"--type must be f16, bf16, q8_0 or f32, got {type}")
    _print_manifest_metrics(_optimize(run_export, model or "smollm2-135m-instruct", out, type, overwrite, check))


@optimize_app.command("distill")
def optimize_distill(
    out: Annotated[str, typer.Option(help="Output directory for the student.")],
    teacher: Annotated[str | None, typer.Option(help="Teacher model (default smollm2-135m-instruct).")] = None,
    student_layers: Annotated[int | None, typer.Option(help="Build the student from this many of the teacher's layers.")] = None,
    student: Annotated[str | None, typer.Option(help="Or start from this model (same tokenizer).")] = None,
    data: Annotated[str, typer.Option(help="Prompts: a demo task (all, dates, ...) or an alpaca JSONL file.")] = "all",
    steps: Annotated[int, typer.Option(help="Training steps.")] = 200,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = 2e-4,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the KL term.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the KL term (1 - alpha for cross-entropy).")] = 0.5,
    eval_samples: Annotated[int, typer.Option(help="Held-out demo samples per task (0: skip).")] = 50,
    overwrite: Overwrite = False,
):
    """Distill the teacher into a smaller student (a draft model for speculative decoding).

    Example: tuneserve optimize distill --student-layers 8 --out runs/draft
             tuneserve serve --speculative draft:runs/draft:4
    """
    from tuneserve.optimize import run_distill

    _print_manifest_metrics(_optimize(
        run_distill, teacher, out, data, student_layers, student, steps, learning_rate,
        temperature=temperature, alpha=alpha, eval_samples=eval_samples, overwrite=overwrite,
    ))


@optimize_app.command("estimate")
def optimize_estimate(
    model: Annotated[str | None, typer.Option(help="Model reference (default smollm2-135m-instruct).")] = None,
    bits: Annotated[list[int] | None, typer.Option(help="32, 16, 8 or 4 (repeatable; default all).")] = None,
    context: Annotated[int, typer.Option(help="Tokens per sequence for the KV cache.")] = 2048,
    batch: Annotated[int, typer.Option(help="Sequences held at once.")] = 1,
    measure: Annotated[bool, typer.Option(help="Also load the model at each width and measure its weights.")] = False,
    tensor_parallel_size: Annotated[int, typer.Option(help="Devices each layer is sharded over (per-device column).")] = 1,
    pipeline_parallel_size: Annotated[int, typer.Option(help="Pipeline stages (per-device column).")] = 1,
):
    """Memory: weights (P x 4 bytes / (32/Q) x 1.2) plus KV cache; measured with --measure.

    The "16-bit embeddings" column keeps the embeddings unquantized, as quantizers do. With
    --tensor-parallel-size / --pipeline-parallel-size, the last column is each device's share.

    Example: tuneserve optimize estimate --context 4096 --batch 8 --tensor-parallel-size 2
    """
    from tuneserve.optimize import run_estimate

    rows = _optimize(run_estimate, model, bits, context, batch, measure, tensor_parallel_size, pipeline_parallel_size)
    table = Table("bits", "weights GiB (rule)", "KV cache GiB", "total GiB", "weights GiB (16-bit embeddings)",
                  "weights GiB (measured)", "per device GiB")
    for r in rows:
        measured = "-" if r.measured_weights_gib is None else f"{r.measured_weights_gib:.3f}"
        per_device = f"{r.per_device_gib:.3f} x {r.num_devices}"
        table.add_row(str(r.bits), f"{r.weights_gib:.3f}", f"{r.kv_cache_gib:.3f}", f"{r.total_gib:.3f}", f"{r.layered_gib:.3f}",
                      measured, per_device)
    console.print(table)


@bench_app.command("run")
def bench_run(
    matrix: Annotated[Path | None, typer.Argument(help="Bench matrix YAML (see examples/bench/).")] = None,
    out: Annotated[Path | None, typer.Option(help="Result directory (default bench-results/NAME-TIME).")] = None,
    url: Annotated[str | None, typer.Option(help="Measure this running server instead of starting one per setting.")] = None,
    model: Annotated[str | None, typer.Option(help="Model (without a matrix: the one setting's model).")] = None,
    repeat: Annotated[int | None, typer.Option(help="Runs per setting and rate (default 3).")] = None,
    num_prompts: Annotated[int | None, typer.Option(help="Requests per run.")] = None,
    input_len: Annotated[int | None, typer.Option(help="Synthetic prompt length (words).")] = None,
    output_len: Annotated[int | None, typer.Option(help="Output tokens per request.")] = None,
    request_rate: Annotated[list[float] | None, typer.Option(help="Requests/s; repeat to sweep (default inf).")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Most requests in flight.")] = None,
    slo: Annotated[str | None, typer.Option(help="Goodput SLOs: ttft_ms=500,tpot_ms=50.")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key for the servers.", envvar="TUNESERVE_API_KEY", show_envvar=True)] = None,
    overwrite: Overwrite = False,
):
    """Start each setting's server exactly as `tuneserve serve`, load it, write results and a report.

    Examples:
      tuneserve bench run examples/bench/cpu.yaml
      tuneserve bench run --url http://127.0.0.1:8000 --request-rate 2 --request-rate 8 --repeat 3
    """
    import datetime

    from tuneserve.bench import markdown_table, run_bench
    from tuneserve.bench.metrics import parse_slo
    from tuneserve.bench.report import load_summary
    from tuneserve.config import ConfigError, load_config

    try:
        base = {"settings": [{"name": "default"}]} if matrix is None else {}
        settings = load_config(_BenchMatrix(), matrix, **base, model=model, repeat=repeat)
        settings = _bench_overrides(settings, url, num_prompts, input_len, output_len, request_rate, max_concurrency,
                                    slo and parse_slo(slo), api_key)
    except (ConfigError, ValueError) as e:
        fail(str(e))
    out = out or Path("bench-results") / f"{settings.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    try:
        run_bench(settings, out, progress=lambda line: console.print(line, highlight=False), overwrite=overwrite)
    except (ValueError, FileExistsError) as e:
        fail(str(e))
    console.print(markdown_table(load_summary(out)), highlight=False, soft_wrap=True)
    console.print(f"report: {out / 'report' / 'index.html'}")


def _BenchMatrix():
    from tuneserve.bench import BenchMatrix

    return BenchMatrix


def _bench_overrides(matrix, url, num_prompts, input_len, output_len, request_rate, max_concurrency, slo, api_key):
    """Flags for the simple case, applied over the matrix and re-validated."""
    from tuneserve.bench import BenchMatrix

    data = matrix.model_dump()
    workload = {"num_prompts": num_prompts, "input_len": input_len, "output_len": output_len}
    data["workload"] |= {k: v for k, v in workload.items() if v is not None}
    if request_rate:
        data["load"]["request_rates"] = request_rate
    if max_concurrency:
        data["load"]["max_concurrency"] = max_concurrency
    if slo:
        data["slo"] = slo
    if url:
        data["settings"] = [s | {"url": url} for s in data["settings"]]
    if api_key:
        data["settings"] = [s | {"api_key": s["api_key"] or api_key} for s in data["settings"]]
    return BenchMatrix.model_validate(data)


@bench_app.command("report")
def bench_report(
    run_dir: Annotated[Path, typer.Argument(help="A `bench run` result directory.")],
    into: Annotated[Path | None, typer.Option(help="Also write the table into this markdown file, between "
                                              "<!-- bench:NAME --> and <!-- /bench:NAME --> (NAME: the run's name).")] = None,
):
    """Rebuild the table, plots and HTML page of a result directory.

    Examples:
      tuneserve bench report bench-results/cpu-20261126-1200
      tuneserve bench report docs/bench/cpu --into README.md
    """
    from tuneserve.bench import markdown_table, write_report
    from tuneserve.bench.report import include_table, load_summary, refresh_summary

    if not (run_dir / "summary.json").is_file():
        fail(f"{run_dir} is not a bench result directory (no summary.json)")
    refresh_summary(run_dir)
    page = write_report(run_dir)
    summary = load_summary(run_dir)
    table = markdown_table(summary)
    console.print(table, highlight=False, soft_wrap=True)
    console.print(f"report: {page}")
    if into is not None:
        try:
            into.write_text(include_table(into.read_text(), summary["name"], table))
        except (OSError, ValueError) as e:
            fail(f"--into {into}: {e}")


@bench_app.command("compare")
def bench_compare(
    a: Annotated[Path, typer.Argument(help="Baseline: result JSON, summary.json or result directory.")],
    b: Annotated[Path, typer.Argument(help="Candidate, same forms.")],
    fail_if: Annotated[list[str] | None, typer.Option(help='Regression rule: "output_throughput<0.95x", "p99_ttft_ms>1.10x", "failed>0".')] = None,
):
    """Show B against A per setting; exit 1 when a --fail-if rule is broken (for CI).

    Example: tuneserve bench compare main.json pr.json --fail-if "output_throughput<0.95x"
    """
    from rich.markup import escape

    from tuneserve.bench import compare, format_comparison, parse_rule

    try:
        comparison = compare(a, b, [parse_rule(r) for r in fail_if or []])
    except ValueError as e:
        fail(str(e))
    console.print(format_comparison(comparison), highlight=False, soft_wrap=True)
    for line in comparison.violations:
        Console(stderr=True, soft_wrap=True).print(f"[red]regression:[/red] {escape(line)}", highlight=False)
    raise typer.Exit(1 if comparison.violations else 0)


if __name__ == "__main__":
    app()
