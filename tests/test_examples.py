"""Every YAML shipped in examples/ loads into its config model."""

from pathlib import Path

import pytest

from tuneserve.config import load_config
from tuneserve.server import ServeConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG_MODELS = {"serve": ServeConfig}


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_example_loads(path):
    kind = path.stem.split("-")[0]
    assert kind in CONFIG_MODELS, f"{path.name}: name it <stage>-*.yaml or add its config model"
    load_config(CONFIG_MODELS[kind], path)
