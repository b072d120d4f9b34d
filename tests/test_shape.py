"""The package's shape: layers import downward only, no import cycle, every command's flags from
one options model, a thin CLI. (DESIGN.md: the pipeline is the layout.)"""

import ast
import collections
from pathlib import Path

import click
import pytest
import typer

from tuneserve.cli import app

PACKAGE = Path(__file__).resolve().parents[1] / "tuneserve"
# Lower layers never import higher ones; stages (layer 4) use one another only through the
# package's public names (its __init__), never its internals.
LAYERS = {
    "tuneserve": 0, "tuneserve.errors": 0, "tuneserve.config": 0, "tuneserve.artifacts": 0, "tuneserve.options": 0,
    "tuneserve.tables": 0, "tuneserve.models": 1, "tuneserve.data": 1, "tuneserve.engine": 2, "tuneserve.evals": 3,
    "tuneserve.finetune": 4, "tuneserve.optimize": 4, "tuneserve.server": 4, "tuneserve.bench": 4,
    "tuneserve.cli": 5, "tuneserve.__main__": 5,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports() -> dict[str, set[str]]:
    """Every tuneserve module each module imports, at module level or inside functions."""
    mods = modules()
    graph = collections.defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneserve"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in mods else node.module
                    if target != name and not name.startswith(target + "."):  # a package's own parents load anyway
                        graph[name].add(target)
    return graph


def layer_of(module: str) -> tuple[str, int]:
    unit = max((u for u in LAYERS if module == u or module.startswith(u + ".")), key=len)
    return unit, LAYERS[unit]


def test_no_module_imports_a_higher_layer_or_another_stages_internals():
    wrong = []
    for module, targets in imports().items():
        unit, layer = layer_of(module)
        for target in targets:
            target_unit, target_layer = layer_of(target)
            if target_layer > layer:
                wrong.append(f"{module} -> {target} (layer {layer} imports layer {target_layer})")
            elif target_layer == layer == 4 and target_unit != unit and target != target_unit:
                wrong.append(f"{module} -> {target} (another stage's internals; use {target_unit})")
    assert wrong == []


def test_no_import_cycle():
    graph = imports()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                cycles.append(sorted([v, *component]))

    for module in modules():
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_cli_is_thin():
    assert len((PACKAGE / "cli.py").read_text().splitlines()) < 300


def commands(group: typer.Typer, prefix: str = "") -> list[tuple[str, object]]:
    found = [(f"{prefix}{c.name}", c.callback) for c in group.registered_commands]
    for sub in group.registered_groups:
        found += commands(sub.typer_instance, f"{prefix}{sub.name} ")
    return found


COMMANDS = commands(app)


def click_command(path: str) -> click.Command:
    command = typer.main.get_command(app)
    for part in path.split():
        command = command.commands[part]
    return command


@pytest.mark.parametrize("path,callback", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_is_a_model_field_with_its_help_and_yaml_key(path, callback):
    model = callback.options_model
    params = {p.name: p for p in click_command(path).params}
    assert set(params) == {"config", *model.model_fields}, path  # every flag a field, every field a flag (and a YAML key)
    for name, field in model.model_fields.items():
        assert params[name].help == field.description, (path, name)
        assert field.description, (path, name)
