"""Settings shared by every stage: where tuneserve keeps its files."""

import os
from pathlib import Path

from tuneserve.errors import UserError


def tuneserve_home() -> Path:
    """The cache directory (`$TUNESERVE_HOME`, default `~/.cache/tuneserve`)."""
    return Path(os.environ.get("TUNESERVE_HOME", Path.home() / ".cache" / "tuneserve")).expanduser()


def models_dir() -> Path:
    """Where imported models live: `$TUNESERVE_HOME/models/<name>`."""
    return tuneserve_home() / "models"


class ConfigError(UserError, ValueError):
    """A config file or flag that does not validate; the message names the bad field."""


def load_config(model_cls, path: str | Path | None = None, *, as_flags: bool = True, **overrides):
    """Build a pydantic config from an optional YAML file plus overrides (None = unset), which an
    error names as flags (--max-model-len) unless `as_flags` is False (e.g. `--set` keys)."""
    import yaml
    from pydantic import ValidationError

    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    given = {k for k, v in overrides.items() if v is not None}
    data |= {k: overrides[k] for k in given}
    flags = given if as_flags else set()
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, path, flags)) from None


def describe_validation_error(error, path=None, flags: set[str] = frozenset()) -> str:
    """One line per bad field: "file: field.path: what is wrong", or "--flag: what is wrong" for a
    value given as a flag (never the value given)."""
    lines = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "value_error":  # our own validators' messages already say what and where
            msg = str(err["ctx"]["error"])
        if msg.startswith("--"):  # already names its flag
            lines.append(msg)
        elif loc and loc[0] in flags:
            lines.append(f"--{loc[0].replace('_', '-')}: {msg}")
        else:
            where = f"{path}: " if path else ""
            lines.append(f"{where}{'.'.join(loc)}: {msg}" if loc else f"{where}{msg}")
    return "\n".join(lines)


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header of a tuneserve (or any OpenAI-compatible) server, when there is a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
