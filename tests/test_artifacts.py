"""Artifacts are written atomically and carry a manifest."""

import pytest

from tuneserve.artifacts import Manifest, atomic_artifact, read_manifest, write_manifest


def test_artifact_appears_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_artifact(final) as tmp:
            (tmp / "weights").write_text("half")
            raise ValueError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_artifact_is_kept_unless_overwrite(tmp_path):
    final = tmp_path / "out"
    with atomic_artifact(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError, match="set overwrite to replace it"):
        with atomic_artifact(final):
            pass
    with pytest.raises(RuntimeError):
        with atomic_artifact(final, overwrite=True) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError
    assert (final / "v").read_text() == "1"  # a failed overwrite keeps the old artifact
    with atomic_artifact(final, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_manifest_round_trips(tmp_path):
    write_manifest(tmp_path, Manifest(kind="adapter", base_model={"name": "m"}, metrics={"em": 0.5}))
    manifest = read_manifest(tmp_path)
    assert manifest.kind == "adapter" and manifest.metrics == {"em": 0.5}
    assert manifest.created_by.startswith("tuneserve")
    assert read_manifest(tmp_path / "missing") is None
