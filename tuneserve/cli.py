"""`tuneserve <stage> ...`: thin commands over the stage functions (heavy imports stay inside)."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Finetune, optimize, serve, bench and deploy LLMs.", no_args_is_help=True)
models_app = typer.Typer(help="Import, list and inspect models.", no_args_is_help=True)
finetune_app = typer.Typer(help="Train adapters from YAML recipes (SFT, DPO, ORPO, reward) and evaluate them.", no_args_is_help=True)
app.add_typer(models_app, name="models")
optimize_app = typer.Typer(help="Merge adapters, quantize, distill draft models, estimate memory.", no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")
app.add_typer(optimize_app, name="optimize")
console = Console()


def fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {message}", highlight=False)
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


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="YAML file of serve settings (flags override it).")] = None,
    model: Annotated[str | None, typer.Option(help="Model reference (default smollm2-135m-instruct).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    served_model_name: Annotated[list[str] | None, typer.Option(help="Name clients use; repeatable.")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context length (prompt + output).")] = None,
    kv_cache_gib: Annotated[float | None, typer.Option(help="KV cache memory in GiB (CPU default: half the free memory after weights, at most 4).")] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(help="GPU only: fraction of GPU memory for vLLM.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float16 | float32.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Most sequences batched per step.")] = None,
    enforce_eager: Annotated[bool | None, typer.Option("--enforce-eager/--compile", help="Skip or use torch.compile (default: eager on CPU).")] = None,
    prefix_caching: Annotated[bool | None, typer.Option("--prefix-caching/--no-prefix-caching", help="Prefix caching (default on).")] = None,
    cpu_threads: Annotated[int | None, typer.Option(help="CPU: engine threads (default: all usable cores).")] = None,
    seed: Annotated[int | None, typer.Option(help="Engine seed.")] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help="Largest request body (413 above).")] = None,
    adapters: Annotated[list[str] | None, typer.Option("--adapter", help="Load an adapter at start: NAME=PATH (repeatable).")] = None,
    adapter_roots: Annotated[list[str] | None, typer.Option("--adapter-root", help="Directory the admin API may load adapters from (repeatable).")] = None,
    enable_lora: Annotated[bool | None, typer.Option("--enable-lora/--no-enable-lora", help="LoRA support (default: on with --adapter/--adapter-root).")] = None,
    max_loras: Annotated[int | None, typer.Option(help="Adapters active in one engine step (default 4).")] = None,
    max_lora_rank: Annotated[int | None, typer.Option(help="Largest adapter rank: 1, 8, 16, 32, 64, ... (default 16).")] = None,
    max_cpu_loras: Annotated[int | None, typer.Option(help="Adapters cached in the engine.")] = None,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key (all scopes).", envvar="TUNESERVE_API_KEY", show_envvar=True)] = None,
    api_keys: Annotated[str | None, typer.Option(help="YAML file of tenants: keys, scopes, models, limits.")] = None,
    max_queued_requests: Annotated[int | None, typer.Option(help="Requests in flight beyond this get 503.")] = None,
    max_tokens_cap: Annotated[int | None, typer.Option(help="Largest max_tokens a request may ask for.")] = None,
    request_timeout_s: Annotated[float | None, typer.Option(help="Abort requests running longer (504).")] = None,
    drain_timeout_s: Annotated[float | None, typer.Option(help="SIGTERM grace period for in-flight requests (default 30).")] = None,
    speculative: Annotated[str | None, typer.Option(help="ngram[:K] or draft:MODEL_REF[:K].")] = None,
    metrics_auth: Annotated[bool | None, typer.Option("--metrics-auth/--no-metrics-auth", help="Require a key for /metrics and /version.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug | info | warning | error.")] = None,
):
    """Serve a model behind an OpenAI-compatible API (vLLM in-process).

    Examples:
      tuneserve serve --model smollm2-135m-instruct --port 8000
      tuneserve serve --adapter dates=examples/adapters/dates --adapter-root runs --api-keys keys.yaml
    """
    overrides = {k: v for k, v in locals().items() if k != "config"}
    from tuneserve.config import ConfigError, load_config
    from tuneserve.models import ModelError
    from tuneserve.server import ServeConfig
    from tuneserve.server import serve as run_server
    from tuneserve.server.startup import StartupError

    try:
        settings = load_config(ServeConfig, config, **overrides)
        exit_code = run_server(settings)
    except (ConfigError, ModelError, StartupError) as e:
        fail(str(e))
    except Exception as e:  # vLLM's own start-up failures: one line, the traceback only when debugging
        if settings.log_level == "debug":
            raise
        fail(f"the server could not start: {type(e).__name__}: {first_line(e)} (--log-level debug shows the traceback)")
    raise typer.Exit(exit_code)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return text.splitlines()[0][:500]


RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML (see examples/recipes/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: --set lora_r=8 (repeatable).")]
OutOpt = Annotated[str | None, typer.Option(help="Where to write the adapter (overrides output_dir).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the last checkpoint of an interrupted run.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing output_dir.")]


def _finetune(method: str, recipe: Path, sets: list[str] | None, output_dir: str | None, resume: bool, overwrite: bool) -> None:
    from tuneserve.config import ConfigError
    from tuneserve.finetune import RUNNERS, DataError
    from tuneserve.finetune.recipe import load_recipe
    from tuneserve.models import ModelError

    try:
        loaded = load_recipe(recipe, method, sets or [], output_dir=output_dir)
        out = RUNNERS[method](loaded, resume=resume, overwrite=overwrite)
    except (ConfigError, DataError, ModelError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    from tuneserve.artifacts import read_manifest

    metrics = read_manifest(out).metrics
    if "eval_after" in metrics:
        print_eval(metrics["eval_after"], metrics.get("eval_before"))
    console.print(str(out))


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
}


def _finetune_command(method: str):
    summary, example = FINETUNE_HELP[method]

    def command(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
        _finetune(method, recipe, set_, output_dir, resume, overwrite)

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
):
    """Memory: weights (P x 4 bytes / (32/Q) x 1.2) plus KV cache; measured with --measure.

    The "16-bit embeddings" column keeps the embeddings unquantized, as quantizers do.

    Example: tuneserve optimize estimate --context 4096 --batch 8 --measure
    """
    from tuneserve.optimize import run_estimate

    rows = _optimize(run_estimate, model, bits, context, batch, measure)
    table = Table("bits", "weights GiB (rule)", "KV cache GiB", "total GiB", "weights GiB (16-bit embeddings)", "weights GiB (measured)")
    for r in rows:
        measured = "-" if r.measured_weights_gib is None else f"{r.measured_weights_gib:.3f}"
        table.add_row(str(r.bits), f"{r.weights_gib:.3f}", f"{r.kv_cache_gib:.3f}", f"{r.total_gib:.3f}", f"{r.layered_gib:.3f}", measured)
    console.print(table)


if __name__ == "__main__":
    app()
