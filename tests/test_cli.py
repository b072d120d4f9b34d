"""The CLI: every command has help, bad settings name the field, and --help stays fast."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tuneserve.cli import app

runner = CliRunner()
COMMANDS = [[], ["models"], ["models", "import"], ["models", "list"], ["models", "show"], ["serve"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tuneserve")
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from tuneserve.cli import app; print(sorted({'torch','vllm','transformers','trl'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_rejects_a_bad_flag_naming_the_field():
    result = runner.invoke(app, ["serve", "--max-model-len", "3"])
    assert result.exit_code == 2
    assert "--max-model-len" in result.output


def test_serve_replicas_check_the_routers_flags_before_starting_anything():
    result = runner.invoke(app, ["serve", "--replicas", "2", "--router-arg=--balance-abs-treshold", "--router-arg=3"])
    assert result.exit_code == 2
    assert "--router-arg: vllm-router refused its flags" in result.output


def test_serve_rejects_unknown_keys_in_the_config_file(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("model: smollm2-135m-instruct\nmax_modle_len: 1024\n")
    result = runner.invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "max_modle_len: unknown setting" in result.output


def test_serve_rejects_an_unknown_model_before_starting_the_engine():
    result = runner.invoke(app, ["serve", "--model", "/no/such/dir"])
    assert result.exit_code == 2
    assert "unknown model" in result.output


def test_models_show_prints_facts():
    result = runner.invoke(app, ["models", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert '"num_layers": 30' in result.output


def test_models_list_shows_the_default_alias():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "smollm2-135m-instruct" in result.output
