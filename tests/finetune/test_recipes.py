"""Bad recipes fail before any model loads, with a message naming the problem."""

import pytest
from typer.testing import CliRunner

from tuneserve.cli import app
from tuneserve.config import ConfigError
from tuneserve.finetune import DataError
from tuneserve.finetune.common import prepare
from tuneserve.finetune.recipe import load_recipe

runner = CliRunner()
GOOD = "datasets:\n  - path: demo:dates\noutput_dir: {out}\n"


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text.format(out=tmp_path / "out", data=tmp_path / "data.jsonl"))
    return path


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Validation must not load a model: make loading one fail loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe was validated")

    for module in ("common", "classify", "grpo", "reward"):  # where the stages call it
        monkeypatch.setattr(f"tuneserve.finetune.{module}.load_for_training", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


CASES = [
    ("unknown key", GOOD + "lora_rank: 8\n", ConfigError, "lora_rank: unknown setting"),
    ("wrong type", GOOD + "lora_r: eight\n", ConfigError, "lora_r: Input should be a valid integer"),
    ("bad adapter", GOOD + "adapter: prefix\n", ConfigError, "adapter: Input should be"),
    ("bad format", "datasets:\n  - path: {data}\n    type: csv\noutput_dir: {out}\n", ConfigError, "datasets.0.type"),
    ("format missing", "datasets:\n  - path: {data}\noutput_dir: {out}\n", ConfigError, "give its type"),
    ("no datasets", "datasets: []\noutput_dir: {out}\n", ConfigError, "datasets: List should have at least 1 item"),
    ("no output_dir", "datasets:\n  - path: demo:dates\n", ConfigError, "output_dir: Field required"),
    ("not a mapping", "- just\n- a list\n", ConfigError, "expected a mapping"),
    ("bad yaml", "datasets: [\n", ConfigError, "recipe.yaml"),
]


@pytest.mark.parametrize("name,text,error,message", CASES, ids=[c[0] for c in CASES])
def test_invalid_recipe_names_the_problem(tmp_path, name, text, error, message):
    with pytest.raises(error, match=message):
        load_recipe(write(tmp_path, text), "sft", [])


DATA_CASES = [
    ("missing file", None, "no such file"),
    ("malformed line", '{"instruction": "a", "output": "b"}\n{"instruction": "c", \n', "data.jsonl:2: malformed JSON"),
    ("missing field", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n', "data.jsonl:3: alpaca records need instruction, output; missing output"),
    ("empty dataset", "\n\n", "the dataset is empty"),
    ("not an object", "[1, 2]\n", "data.jsonl:1: expected a JSON object"),
    ("empty output", '{"instruction": "a", "output": ""}\n', "output must be a non-empty string"),
]


@pytest.mark.parametrize("name,content,message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_reported_with_its_line(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / "data.jsonl").write_text(content)
    recipe = load_recipe(write(tmp_path, "datasets:\n  - path: {data}\n    type: alpaca\noutput_dir: {out}\n"), "sft", [])
    with pytest.raises(DataError, match=message):
        prepare(recipe)


def test_messages_must_end_with_an_assistant_turn(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    recipe = load_recipe(write(tmp_path, "datasets:\n  - path: {data}\n    type: messages\noutput_dir: {out}\n"), "sft", [])
    with pytest.raises(DataError, match="data.jsonl:1: messages must end with an assistant turn"):
        prepare(recipe)


def test_unknown_demo_task_lists_the_tasks(tmp_path):
    recipe = load_recipe(write(tmp_path, "datasets:\n  - path: demo:poetry\noutput_dir: {out}\n"), "sft", [])
    with pytest.raises(DataError, match="unknown demo task 'poetry'; choose from all, dates"):
        prepare(recipe)


def test_data_must_fit_the_method(tmp_path):
    text = "datasets:\n  - path: {data}\n    type: alpaca\noutput_dir: {out}\n"
    with pytest.raises(ConfigError, match="dpo needs preference data"):
        load_recipe(write(tmp_path, text), "dpo", [])


def test_recipe_for_another_method_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="method dpo; run `tuneserve finetune dpo`"):
        load_recipe(write(tmp_path, "method: dpo\n" + GOOD), "sft", [])


def test_set_overrides_keys_with_typed_values(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD), "sft", ["lora_r=8", "lora_target_modules=[q_proj, v_proj]", "max_steps=3"])
    assert (recipe.lora_r, recipe.lora_target_modules, recipe.max_steps) == (8, ["q_proj", "v_proj"], 3)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_recipe(write(tmp_path, GOOD), "sft", ["lora_r"])
    with pytest.raises(ConfigError, match="lora_r: Input should be greater than or equal to 1"):
        load_recipe(write(tmp_path, GOOD), "sft", ["lora_r=0"])


def test_existing_output_dir_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="set overwrite to replace it"):
        prepare(load_recipe(write(tmp_path, GOOD), "sft", []))


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        prepare(load_recipe(write(tmp_path, GOOD), "sft", []), resume=True)


def test_cli_reports_the_bad_key_and_exits_2(tmp_path):
    result = runner.invoke(app, ["finetune", "sft", str(write(tmp_path, GOOD + "learning_rte: 1\n"))])
    assert result.exit_code == 2
    assert "learning_rte: unknown setting" in result.output

