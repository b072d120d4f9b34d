"""Model references resolve to local HF directories, or fail with a message that says why."""

import json
import shutil

import pytest

from tuneserve.models import ModelError, model_facts, resolve_model
from tuneserve.models.aliases import DEFAULT_MODEL


@pytest.fixture(scope="module")
def default_dir():
    return resolve_model(DEFAULT_MODEL)


def test_default_alias_resolves_to_an_imported_checkpoint(default_dir):
    assert (default_dir / "config.json").is_file()
    assert (default_dir / "model.safetensors").is_file()
    assert (default_dir / "chat_template.jinja").is_file()
    manifest = json.loads((default_dir / "tuneserve.json").read_text())
    assert manifest["kind"] == "model"
    assert len(manifest["base_model"]["sha256"]) == 64


def test_none_means_the_default_model(default_dir):
    assert resolve_model(None) == default_dir


def test_local_directory_and_imported_name_resolve(default_dir, tmp_path, monkeypatch):
    assert resolve_model(str(default_dir)) == default_dir.resolve()
    monkeypatch.setenv("TUNESERVE_HOME", str(default_dir.parent.parent))
    copy = default_dir.parent / "my-copy-for-test"
    shutil.copytree(default_dir, copy)
    try:
        assert resolve_model("my-copy-for-test") == copy
    finally:
        shutil.rmtree(copy)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unknown_reference_names_the_alternatives():
    with pytest.raises(ModelError, match="unknown model 'not a model!'.*smollm2-135m-instruct"):
        resolve_model("not a model!")


def test_hub_id_without_hub_access_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not fetch 'nobody/no-such-model'"):
        resolve_model("nobody/no-such-model")


def test_facts_match_the_loaded_model(default_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    facts = model_facts(default_dir)
    model = AutoModelForCausalLM.from_pretrained(default_dir, dtype=torch.bfloat16)
    config = AutoConfig.from_pretrained(default_dir)
    assert facts.num_params == sum(p.numel() for p in model.parameters())
    assert facts.num_layers == len(model.model.layers) == config.num_hidden_layers
    assert facts.hidden_size == model.model.embed_tokens.embedding_dim
    assert facts.vocab_size == model.model.embed_tokens.num_embeddings
    assert facts.num_kv_heads * facts.head_dim == model.model.layers[0].self_attn.k_proj.out_features
    assert facts.num_heads * facts.head_dim == model.model.layers[0].self_attn.q_proj.out_features
    assert facts.context_length == config.max_position_embeddings
    assert facts.disk_bytes > facts.num_params * 2  # bf16 weights plus tokenizer files
