"""Every YAML shipped in examples/ loads into its config model."""

from pathlib import Path

import pytest

from tuneserve.config import load_config
from tuneserve.finetune.recipe import load_recipe
from tuneserve.server import ServeConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG_MODELS = {"serve": ServeConfig}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_loads(path):
    kind = path.stem.split("-")[0]
    assert kind in CONFIG_MODELS, f"{path.name}: name it <stage>-*.yaml or add its config model"
    load_config(CONFIG_MODELS[kind], path)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_loads(path):
    method = {"qlora": "sft", "lora": "sft"}.get(path.stem.split("-")[0], path.stem.split("-")[0])
    recipe = load_recipe(path, method, [])
    assert recipe.output_dir.startswith("runs/")
