"""Who a model is, and whether an adapter belongs to it: the records every stage writes and checks."""

import json
from pathlib import Path

from tuneserve.artifacts import read_manifest
from tuneserve.models.errors import ModelError
from tuneserve.models.facts import model_fingerprint


def base_identity(name: str, model_dir: Path) -> dict:
    """The manifest's `base_model` record: the name given, where it was, and its fingerprint."""
    return {"name": name, "path": str(model_dir), "sha256": model_fingerprint(model_dir)}


def read_adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json of a PEFT adapter directory; ModelError when it is not one."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable ({e})") from None


def base_mismatch(adapter_dir: Path, config: dict, fingerprint: str, names: set[str]) -> str | None:
    """Why the adapter does not belong to the base with this fingerprint and these names, or None.

    The manifest's fingerprint decides when there is one; otherwise PEFT's base_model_name_or_path
    must be one of the base's names (or the basename of its path).
    """
    manifest = read_manifest(adapter_dir)
    trained_on = manifest.base_model.get("sha256") if manifest else None
    if trained_on is not None:
        if trained_on == fingerprint:
            return None
        return f"adapter was trained on {manifest.base_model.get('name')} (fingerprint {trained_on[:12]}), not this base (fingerprint {fingerprint[:12]})"
    named = str(config.get("base_model_name_or_path") or "")
    if named and named not in names and Path(named).name not in names:
        return f"adapter was trained on {named!r}, not this base ({', '.join(sorted(names))})"
    return None
