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
app.add_typer(finetune_app, name="finetune")
console = Console()


def fail(message: str) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
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
    kv_cache_gib: Annotated[float | None, typer.Option(help="KV cache memory in GiB.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float16 | float32.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Most sequences batched per step.")] = None,
    enforce_eager: Annotated[bool | None, typer.Option("--enforce-eager/--compile", help="Skip or use torch.compile (default: eager on CPU).")] = None,
    prefix_caching: Annotated[bool | None, typer.Option("--prefix-caching/--no-prefix-caching", help="Prefix caching (default on).")] = None,
    cpu_threads: Annotated[int | None, typer.Option(help="CPU: engine threads (default: all usable cores).")] = None,
    seed: Annotated[int | None, typer.Option(help="Engine seed.")] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help="Largest request body (413 above).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug | info | warning | error.")] = None,
):
    """Serve a model behind an OpenAI-compatible API (vLLM in-process).

    Example: tuneserve serve --model smollm2-135m-instruct --port 8000
    """
    overrides = {k: v for k, v in locals().items() if k != "config"}
    from tuneserve.config import ConfigError, load_config
    from tuneserve.models import ModelError
    from tuneserve.server import ServeConfig
    from tuneserve.server import serve as run_server

    try:
        run_server(load_config(ServeConfig, config, **overrides))
    except (ConfigError, ModelError) as e:
        fail(str(e))


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
    console.print(str(out))


@finetune_app.command("sft")
def finetune_sft(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
    """Supervised finetuning (LoRA, QLoRA or full).

    Example: tuneserve finetune sft examples/recipes/qlora-demo.yaml --set max_steps=20
    """
    _finetune("sft", recipe, set_, output_dir, resume, overwrite)


@finetune_app.command("dpo")
def finetune_dpo(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
    """Direct preference optimization on prompt/chosen/rejected data.

    Example: tuneserve finetune dpo examples/recipes/dpo-demo.yaml
    """
    _finetune("dpo", recipe, set_, output_dir, resume, overwrite)


@finetune_app.command("orpo")
def finetune_orpo(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
    """Odds-ratio preference optimization (no reference model).

    Example: tuneserve finetune orpo examples/recipes/orpo-demo.yaml
    """
    _finetune("orpo", recipe, set_, output_dir, resume, overwrite)


@finetune_app.command("reward")
def finetune_reward(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
    """Reward model (one-logit head + LoRA) on preference data.

    Example: tuneserve finetune reward examples/recipes/reward-demo.yaml
    """
    _finetune("reward", recipe, set_, output_dir, resume, overwrite)


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
    table = Table("task", "samples", "exact match", "perplexity", "preference acc.")
    for name, r in [*results["tasks"].items(), ("all", results)]:
        pref = r.get("preference_accuracy")
        table.add_row(name, str(r["num_samples"]), f"{r['exact_match']:.3f}", f"{r['perplexity']:.3f}", "-" if pref is None else f"{pref:.3f}")
    console.print(table)


if __name__ == "__main__":
    app()
