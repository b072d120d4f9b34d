"""Checks an adapter passes before the engine ever sees it. Each failure is a clear 4xx."""

import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from tuneserve.models.facts import safetensors_header
from tuneserve.models.identity import base_mismatch
from tuneserve.server.errors import ClientError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterError(ClientError):
    code = "invalid_adapter"


class AdapterBaseMismatchError(AdapterError):
    code = "adapter_base_mismatch"


class AdapterPathError(AdapterError):
    code = "adapter_path_not_allowed"


@dataclass(frozen=True)
class ServedBase:
    """What an adapter must have been trained on."""

    names: list[str]
    path: Path
    fingerprint: str
    weight_shapes: dict[str, list[int]]  # "model.layers.0.self_attn.q_proj" -> [out, in]

    @property
    def module_names(self) -> set[str]:
        """Leaf names of the base's layers (q_proj, down_proj, ...)."""
        return {path.rsplit(".", 1)[-1] for path in self.weight_shapes}


@dataclass(frozen=True)
class AdapterInfo:
    path: Path  # what the engine loads: the checked snapshot (server/snapshots.py)
    rank: int
    target_modules: list[str]
    base_model: str | None
    source_path: Path | None = None  # where it was loaded from
    num_bytes: int = 0  # the snapshot's size on disk


def check_name(name: str, base: ServedBase) -> None:
    if not SAFE_NAME.match(name or ""):
        raise AdapterError(
            f"adapter name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param="name",
        )
    if name in base.names:
        raise AdapterError(f"adapter name {name!r} is the base model's name", param="name")


def shown(path: str | Path, limit: int = 120) -> str:
    """A path for an error message: long ones cut, so a hostile 4 KB path is not echoed whole."""
    text = str(path)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def resolve_path(path: str, roots: list[Path]) -> Path:
    """The adapter directory, which must lie under one of `roots` after resolving symlinks and '..'."""
    if not roots:
        raise AdapterPathError(
            "loading adapters at run time is disabled: start the server with --adapter-root DIR", param="path"
        )
    try:
        raw = Path(path).expanduser()
        candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
        for candidate in candidates:
            resolved = candidate.resolve()
            if any(resolved.is_relative_to(root.resolve()) for root in roots):
                return resolved
    except (OSError, ValueError, RuntimeError) as e:  # too long, a NUL byte, a symlink loop, "~nosuchuser"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise AdapterPathError(f"adapter path {shown(path)} is not usable: {reason}", param="path") from None
    raise AdapterPathError(f"adapter path {shown(path)} is outside the allowed adapter roots", param="path")


MAX_CONFIG_BYTES = 1 << 20


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes; devices, FIFOs, oversized and unreadable files are refused (400).

    `/dev/zero` or a FIFO behind a symlink would otherwise block or exhaust memory.
    """
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise AdapterError(f"{shown(path)} is not a regular file", param="path")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise AdapterError(f"cannot read {shown(path)}: {e.strerror or e}", param="path") from None
    if len(data) > max_bytes:
        raise AdapterError(f"{shown(path)} is larger than {max_bytes} bytes", param="path")
    return data


def check_adapter(path: Path, base: ServedBase, max_rank: int, force: bool = False) -> AdapterInfo:
    """Validate a PEFT LoRA directory against the served base; returns what the engine needs.

    Reads and checks every tensor: the registry runs it in a worker thread, off the event loop.
    """
    try:
        return _check_adapter(path, base, max_rank, force)
    except OSError as e:  # unreadable files, I/O errors: the adapter's fault, not the server's
        raise AdapterError(f"cannot read adapter {shown(path)}: {e.strerror or e}", param="path") from None


def _check_adapter(path: Path, base: ServedBase, max_rank: int, force: bool) -> AdapterInfo:
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist", param="path")
    config = _read_config(path)
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"{path}/adapter_config.json: r must be a positive integer", param="path")
    if rank > max_rank:
        raise AdapterError(f"adapter rank {rank} is above this server's --max-lora-rank {max_rank}", param="path")
    targets = _targets(config, base, path)
    if config.get("modules_to_save"):
        raise AdapterError(
            f"modules_to_save {config['modules_to_save']} cannot be served: vLLM's LoRA applies only "
            "low-rank deltas to existing layers",
            param="path",
        )
    _check_weights(path, rank, base)
    if not force:
        _check_base(path, config, base)
    return AdapterInfo(path, rank, targets, config.get("base_model_name_or_path"))


def _read_config(path: Path) -> dict:
    config_path = path / "adapter_config.json"
    if not config_path.exists():
        raise AdapterError(f"{path} has no adapter_config.json (not a PEFT adapter)", param="path")
    try:
        config = json.loads(read_regular_file(config_path, MAX_CONFIG_BYTES))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise AdapterError(f"{config_path} is not valid JSON: {str(e)[:200]}", param="path") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{config_path}: peft_type must be LORA", param="path")
    return config


def _targets(config: dict, base: ServedBase, path: Path) -> list[str]:
    targets = config.get("target_modules")
    if isinstance(targets, str):  # a regex in PEFT: let the weights file speak for it
        return [targets]
    if not isinstance(targets, list) or not targets:
        raise AdapterError(f"{path}/adapter_config.json: target_modules is missing", param="path")
    unknown = sorted(set(targets) - base.module_names)
    if unknown:
        raise AdapterError(
            f"target_modules {unknown} are not layers of the served model "
            f"(it has {', '.join(sorted(base.module_names))})",
            param="path",
        )
    return targets


FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _check_weights(path: Path, rank: int, base: ServedBase) -> None:
    """Header, size, pairing, shapes against the base, dtypes and finiteness of every tensor.

    vLLM loads adapters with wrong shapes, missing halves, integer or NaN weights without a
    word and then serves garbage, so all of it is checked here.
    """
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(f"{path} has no {WEIGHTS_FILE}", param="path")
    try:
        raw, header = safetensors_header(weights)
    except Exception:
        raise AdapterError(f"{weights} is not a valid safetensors file", param="path") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else {}
    if not all(_is_tensor_entry(t) for t in tensors.values()):
        raise AdapterError(f"{weights} has a malformed safetensors header", param="path")
    data_end = max((t["data_offsets"][1] for t in tensors.values()), default=0)
    if 8 + len(raw) + data_end != weights.stat().st_size:
        raise AdapterError(f"{weights} is truncated or corrupt (size does not match its header)", param="path")
    if not tensors:
        raise AdapterError(f"{weights} holds no tensors", param="path")
    modules: dict[str, dict[str, list[int]]] = {}
    for key, t in tensors.items():
        module, half = _split_key(key, weights)
        if t["dtype"] not in FLOAT_DTYPES:
            raise AdapterError(f"{weights}: {key} has dtype {t['dtype']}; LoRA weights must be floating point", param="path")
        modules.setdefault(module, {})[half] = t["shape"]
    for module, halves in modules.items():
        _check_module(module, halves, rank, base, weights)
    _check_finite(weights)


def _is_tensor_entry(t) -> bool:
    offsets = t.get("data_offsets") if isinstance(t, dict) else None
    return (
        isinstance(t, dict) and isinstance(t.get("dtype"), str)
        and isinstance(t.get("shape"), list) and all(isinstance(n, int) for n in t["shape"])
        and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
    )


def _split_key(key: str, weights: Path) -> tuple[str, str]:
    """"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" -> (module path, "A")."""
    for half in ("A", "B"):
        marker = f".lora_{half}."
        if marker in key:
            return key.split(marker)[0].removeprefix("base_model.model."), half
    raise AdapterError(f"{weights}: {key} is not a LoRA A/B matrix", param="path")


def _check_module(module: str, halves: dict, rank: int, base: ServedBase, weights: Path) -> None:
    if set(halves) != {"A", "B"}:
        raise AdapterError(f"{weights}: {module} has lora_{next(iter(halves))} but not its pair", param="path")
    if any(len(shape) != 2 for shape in halves.values()):
        raise AdapterError(f"{weights}: {module} has A {halves['A']} and B {halves['B']}; LoRA matrices have two dimensions", param="path")
    if module not in base.weight_shapes:
        raise AdapterError(f"{weights}: {module} is not a layer of the served model", param="path")
    out_features, in_features = base.weight_shapes[module]
    a, b = halves["A"], halves["B"]
    if a[0] != rank or b[-1] != rank:
        raise AdapterError(f"{weights}: {module} has rank {a[0]}, adapter_config says r={rank}", param="path")
    if a != [rank, in_features] or b != [out_features, rank]:
        raise AdapterError(
            f"{weights}: {module} has A {a} and B {b}; the served model needs A [{rank}, {in_features}] "
            f"and B [{out_features}, {rank}] (trained for another model?)",
            param="path",
        )


def _check_finite(weights: Path) -> None:
    import torch
    from safetensors import safe_open

    try:
        with safe_open(weights, "pt") as f:
            bad = next((key for key in f.keys() if not torch.isfinite(f.get_tensor(key)).all()), None)
    except Exception as e:  # safetensors' own errors on a file whose header looked sane
        raise AdapterError(f"{weights} cannot be read: {str(e)[:200]}", param="path") from None
    if bad is not None:
        raise AdapterError(f"{weights}: {bad} contains NaN or infinite values", param="path")


def _check_base(path: Path, config: dict, base: ServedBase) -> None:

    reason = base_mismatch(path, config, base.fingerprint, {*base.names, str(base.path), base.path.name})
    if reason:
        raise AdapterBaseMismatchError(f"{reason}; pass force to load anyway", param="path")
