"""The artifact contract: a directory plus a `tuneserve.json` manifest, written atomically."""

import contextlib
import datetime
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneserve import __version__
from tuneserve.errors import ArtifactExistsError

MANIFEST_NAME = "tuneserve.json"

ArtifactKind = Literal["model", "adapter", "reward-model", "classifier", "quantized-model", "pruned-model", "student", "gguf", "bench-result"]


class Manifest(BaseModel):
    """What every stage writes next to its output, and what later stages read."""

    model_config = ConfigDict(extra="allow")

    kind: ArtifactKind
    base_model: dict[str, Any] = Field(
        default_factory=dict, description="Identity of the base model: name and fingerprint."
    )
    created_by: str = Field(default_factory=lambda: " ".join(["tuneserve", *sys.argv[1:]]))
    created_at: str = Field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    tuneserve_version: str = __version__
    recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    parents: list[str] = Field(default_factory=list)


def _share(root: Path) -> None:
    """mkdtemp (and some savers) create owner-only files; give artifacts the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def read_manifest(artifact_dir: str | Path) -> Manifest | None:
    """The manifest of `artifact_dir`, or None when it has none."""
    path = Path(artifact_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    return Manifest.model_validate_json(path.read_text())


def write_manifest(artifact_dir: str | Path, manifest: Manifest) -> None:
    path = Path(artifact_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, path)


def refuse_existing(out: str | Path, overwrite: bool, what: str = "") -> None:
    """Fail early (before any expensive work) when `out` exists and may not be replaced."""
    if Path(out).exists() and not overwrite:
        raise ArtifactExistsError(f"{what}{out} already exists (set overwrite to replace it)")


@contextlib.contextmanager
def atomic_artifact(final_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final_dir`; rename it into place only on success.

    A crash or an exception leaves `final_dir` as it was (absent, or the previous artifact).
    """
    final_dir = Path(final_dir)
    refuse_existing(final_dir, overwrite)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        yield tmp_dir
        _share(tmp_dir)
        if final_dir.exists():
            # Move the old one aside first so the swap is two renames, never a half-deleted dir.
            old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, old)
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
