"""Every bad adapter is refused with a clear 4xx before (or when) the engine sees it."""

import json
import shutil

import pytest

from tests.helpers import MODEL, assert_openai_error, assert_still_serving

pytestmark = pytest.mark.engine


def edit_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps(config | changes))


def make_bad(root, name: str, damage) -> str:
    """A copy of the dates adapter under the adapter root, damaged by `damage(path)`."""
    path = root / f"bad-{name}"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(root / "dates", path)
    damage(path)
    return str(path)


def other_base_manifest(path):
    manifest = json.loads((path / "tuneserve.json").read_text())
    manifest["base_model"] = {"name": "some-other-model", "sha256": "0" * 64}
    (path / "tuneserve.json").write_text(json.dumps(manifest))


def no_manifest_other_base(path):
    (path / "tuneserve.json").unlink()
    edit_config(path, base_model_name_or_path="meta-llama/Llama-3.1-8B")


def corrupt_header(path):
    (path / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")


def rewrite_weights(change):
    """A damage that rewrites the tensors (a valid file whose contents are wrong)."""
    def damage(path):
        from safetensors.torch import load_file, save_file

        tensors = load_file(path / "adapter_model.safetensors")
        change(tensors, next(k for k in sorted(tensors) if "lora_B" in k))
        save_file(tensors, path / "adapter_model.safetensors")

    return damage


def shorter(tensors, key):
    tensors[key] = tensors[key][:-5].clone()


def drop_pair(tensors, key):
    del tensors[key.replace("lora_B", "lora_A")]


def as_int(tensors, key):
    import torch

    tensors[key] = (tensors[key] * 100).to(torch.int32)


def with_nan(tensors, key):
    tensors[key] = tensors[key] * float("nan")


def scalar(tensors, key):
    import torch

    tensors[key] = torch.tensor(1.0)  # a header with shape []: indexing it was a 500


def layer_99(tensors, key):
    tensors[key.replace("layers.0.", "layers.99.")] = tensors.pop(key)
    a = key.replace("lora_B", "lora_A")
    tensors[a.replace("layers.0.", "layers.99.")] = tensors.pop(a)


DAMAGES = [
    ("no adapter_config", lambda p: (p / "adapter_config.json").unlink(), "invalid_adapter", "no adapter_config.json"),
    ("config not json", lambda p: (p / "adapter_config.json").write_text("{nope"), "invalid_adapter", "not valid JSON"),
    ("not lora", lambda p: edit_config(p, peft_type="PREFIX_TUNING"), "invalid_adapter", "peft_type must be LORA"),
    ("rank above max", lambda p: edit_config(p, r=64), "invalid_adapter", "above this server's --max-lora-rank 16"),
    ("unknown target", lambda p: edit_config(p, target_modules=["q_proj", "attn_qkv"]), "invalid_adapter", "attn_qkv"),
    ("modules_to_save", lambda p: edit_config(p, modules_to_save=["lm_head"]), "invalid_adapter", "modules_to_save"),
    ("no weights", lambda p: (p / "adapter_model.safetensors").unlink(), "invalid_adapter", "no adapter_model.safetensors"),
    ("corrupt header", corrupt_header, "invalid_adapter", "not a valid safetensors"),
    ("truncated weights", lambda p: (p / "adapter_model.safetensors").write_bytes((p / "adapter_model.safetensors").read_bytes()[:-64]), "invalid_adapter", "truncated"),
    ("rank mismatch", lambda p: edit_config(p, r=16), "invalid_adapter", "adapter_config says r=16"),
    ("other base (manifest)", other_base_manifest, "adapter_base_mismatch", "some-other-model"),
    ("other base (config)", no_manifest_other_base, "adapter_base_mismatch", "Llama-3.1-8B"),
    # vLLM itself loads all of these without complaint and then serves garbage:
    ("wrong output size", rewrite_weights(shorter), "invalid_adapter", "the served model needs A [8, 576] and B [576, 8]"),
    ("half of a pair", rewrite_weights(drop_pair), "invalid_adapter", "but not its pair"),
    ("integer weights", rewrite_weights(as_int), "invalid_adapter", "must be floating point"),
    ("NaN weights", rewrite_weights(with_nan), "invalid_adapter", "NaN or infinite"),
    ("scalar tensor", rewrite_weights(scalar), "invalid_adapter", "LoRA matrices have two dimensions"),
    ("layer the model lacks", rewrite_weights(layer_99), "invalid_adapter", "model.layers.99.self_attn.q_proj is not a layer"),
]


@pytest.mark.parametrize("name,damage,code,message", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_bad_adapter_is_refused(http, adapter_root, name, damage, code, message):
    path = make_bad(adapter_root, name.replace(" ", "-").replace("(", "").replace(")", ""), damage)
    response = http.post("/v1/adapters", json={"name": "bad", "path": path})
    error = assert_openai_error(response, 400, "path", code)
    assert message in error["message"]
    assert_openai_error(http.get("/v1/adapters/bad"), 404)
    assert_still_serving(http)


def test_force_loads_an_adapter_trained_on_another_base(http, adapter_root):
    path = make_bad(adapter_root, "forced", other_base_manifest)
    assert_openai_error(http.post("/v1/adapters", json={"name": "forced", "path": path}), 400, code="adapter_base_mismatch")
    response = http.post("/v1/adapters", json={"name": "forced", "path": path, "force": True})
    assert response.status_code == 200, response.text
    assert http.delete("/v1/adapters/forced").status_code == 200


PATHS = [
    ("outside the roots", "/etc", "adapter_path_not_allowed"),
    ("traversal", "../../../../etc", "adapter_path_not_allowed"),
    ("missing directory", "no-such-adapter", "invalid_adapter"),
]


@pytest.mark.parametrize("name,path,code", PATHS, ids=[p[0] for p in PATHS])
def test_paths_must_stay_under_the_adapter_roots(http, name, path, code):
    assert_openai_error(http.post("/v1/adapters", json={"name": "x", "path": path}), 400, "path", code)
    assert_still_serving(http)


def test_symlink_out_of_the_root_is_refused(http, adapter_root, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(adapter_root / "dates", outside)
    link = adapter_root / "sneaky-link"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    assert_openai_error(http.post("/v1/adapters", json={"name": "x", "path": "sneaky-link"}), 400, "path", "adapter_path_not_allowed")


NAMES = [("slash", "a/b"), ("space", "a b"), ("traversal", ".."), ("empty", ""), ("too long", "a" * 65), ("base name", MODEL)]


@pytest.mark.parametrize("name,value", NAMES, ids=[n[0] for n in NAMES])
def test_unsafe_adapter_names_are_refused(http, name, value):
    assert_openai_error(http.post("/v1/adapters", json={"name": value, "path": "dates"}), 400, "name", "invalid_adapter")
    assert_still_serving(http)


def test_admin_body_is_validated(http):
    assert_openai_error(http.post("/v1/adapters", json={"name": "x"}), 400, "path")
    assert_openai_error(http.post("/v1/adapters", json={"name": "x", "path": "dates", "forse": True}), 400, "forse")
    assert_still_serving(http)
