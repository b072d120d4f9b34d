"""Commands built from options models: a pydantic model declares each flag once.

A field's name is its YAML key and (dashed) its flag, its `description` is the flag's help, and its
validators check flag and file alike. `json_schema_extra` may rename a flag (`{"flag": "--adapter"}`,
`{"flag": "--enforce-eager/--compile"}`) or read an environment variable (`{"envvar": "NAME"}`).
Every generated command also takes `--config FILE` (YAML of the same keys; flags override it).
"""

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tuneserve.config import load_config
from tuneserve.errors import UserError

CONFIG_HELP = "YAML file of these settings (flags override it)."


def flag_name(name: str, field: FieldInfo) -> str:
    """The flag a field is given as (`--max-model-len`; a bool's `--x/--no-x`)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "flag" in extra:
        return str(extra["flag"])
    dashed = "--" + name.replace("_", "-")
    return f"{dashed}/--no-{name.replace('_', '-')}" if cli_type(field) is bool else dashed


def cli_type(field: FieldInfo) -> Any:
    """The type typer parses a field as; pydantic validates the value afterwards."""
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if origin is list:
        return list[_scalar(typing.get_args(annotation)[0])]
    if origin is dict:
        return list[str]  # NAME=VALUE items, which the field's own validator parses
    return _scalar(annotation)


def _scalar(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        return int if all(isinstance(v, int) for v in values) else str
    return annotation if annotation in (bool, int, float, str, Path) else str


def metavar(field: FieldInfo) -> str:
    """What the help shows as the value: a Literal's choices, else the kind of value."""
    annotation = field.annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return "|".join(str(v) for v in typing.get_args(candidate))
    return {int: "INTEGER", float: "NUMBER", Path: "PATH"}.get(cli_type(field), "TEXT")


def options_of(model_cls: type[BaseModel], positional: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One typer parameter per field: an Argument for the `positional` ones, else an Option."""
    params = []
    for name, field in model_cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        kind = cli_type(field)
        if name in positional:
            info = typer.Argument(help=field.description, show_default=False, metavar=name.upper())
            kind = kind | None
        else:
            info = typer.Option(*flag_name(name, field).split(" "), help=field.description, envvar=extra.get("envvar"),
                                show_envvar="envvar" in extra, show_default=False, metavar=None if kind is bool else metavar(field))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, info]))
    return sorted(params, key=lambda p: p.name not in positional)


def command_from(
    model_cls: type[BaseModel], run: Callable[[BaseModel], Any], doc: str, on_error: Callable[[str], Any],
    positional: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """A typer command function: `--config FILE` and one option per field of `model_cls` (the
    `positional` fields as arguments); it validates them into the model and calls `run(options)`.
    A UserError from validation or from `run` goes to `on_error` (which prints it and exits)."""
    config = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=Annotated[Path | None, typer.Option(help=CONFIG_HELP)])
    params = [config, *options_of(model_cls, positional)]

    def command(**values: Any) -> Any:
        path = values.pop("config")
        given = {k: v for k, v in values.items() if v not in (None, [], ())}
        try:
            return run(load_config(model_cls, path, **given))
        except UserError as e:
            return on_error(str(e))

    command.__signature__ = inspect.Signature(sorted(params, key=lambda p: p.name not in positional))
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.options_model = model_cls  # what tests/test_shape.py checks the flags against
    return command
