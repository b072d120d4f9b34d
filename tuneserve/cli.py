"""`tuneserve <stage> ...`: thin commands over the stage functions (heavy imports stay inside)."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Finetune, optimize, serve, bench and deploy LLMs.", no_args_is_help=True)
models_app = typer.Typer(help="Import, list and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
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


if __name__ == "__main__":
    app()
