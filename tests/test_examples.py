"""Every YAML shipped in examples/ loads into its config model."""

from pathlib import Path

import pytest

from tuneserve.config import load_config
from tuneserve.finetune.recipe import load_recipe
from tuneserve.server import ServeConfig
from tuneserve.server.adapters_file import AdaptersFile, read_adapters_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG_MODELS = {"serve": ServeConfig, "adapters": AdaptersFile}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_loads(path):
    kind = path.stem.split("-")[0]
    assert kind in CONFIG_MODELS, f"{path.name}: name it <stage>-*.yaml or add its config model"
    load_config(CONFIG_MODELS[kind], path)


def test_example_adapters_file_points_at_the_committed_adapters():
    _, entries = read_adapters_file(EXAMPLES / "adapters.yaml")
    assert set(entries) == {"dates", "units"}
    assert all((Path(e.path) / "adapter_config.json").is_file() for e in entries.values())


@pytest.mark.parametrize("path", sorted((EXAMPLES / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_loads(path):
    method = {"qlora": "sft", "lora": "sft"}.get(path.stem.split("-")[0], path.stem.split("-")[0])
    recipe = load_recipe(path, method, [])
    assert recipe.output_dir.startswith("runs/")


@pytest.mark.parametrize("path", sorted((EXAMPLES / "bench").glob("*.yaml")), ids=lambda p: p.name)
def test_bench_matrix_loads_and_every_setting_is_a_valid_serve_config(path):
    from tuneserve.bench import BenchMatrix

    matrix = load_config(BenchMatrix, path)
    for setting in matrix.settings:
        matrix.serve_config_for(setting)  # raises, naming the setting, on a bad serve key
        assert setting.url is None  # shipped matrices start their own servers


def test_bench_matrix_errors_name_the_setting_and_key(tmp_path):
    from tuneserve.bench import BenchMatrix
    from tuneserve.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("settings:\n  - name: typo\n    serve: {kv_cache_gb: 1}\n")
    with pytest.raises(ConfigError, match=r"settings\['typo'\].serve.kv_cache_gb: unknown setting"):
        load_config(BenchMatrix, bad)
    bad.write_text("settings:\n  - name: a\n    workload: {kind: sharegpt}\n")
    with pytest.raises(ConfigError, match="workload.path: a sharegpt workload needs the JSON file"):
        load_config(BenchMatrix, bad)
    bad.write_text("settings: [{name: a}, {name: a}]\n")
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(BenchMatrix, bad)
