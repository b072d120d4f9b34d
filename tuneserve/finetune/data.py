"""Recipe datasets -> rows in TRL's conversational formats, checked line by line.

SFT rows are prompt/completion conversations (TRL then computes loss on the completion only),
or {"text"} for plain text. Preference rows are prompt/chosen/rejected conversations.
"""

import hashlib
import json
from pathlib import Path

from tuneserve.finetune.demo import demo_samples, task_names
from tuneserve.finetune.recipe import PREFERENCE_METHODS, DatasetSpec, Recipe

REQUIRED_KEYS = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "text": ("text",),
}


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, line and field."""


def spread(rows: list, count: int) -> list:
    """At most `count` rows taken evenly over all of `rows` (demo data lists task after task)."""
    return rows[:: max(1, len(rows) // count)][:count]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def load_rows(recipe: Recipe) -> tuple[list[dict], dict[str, str]]:
    """All training rows of the recipe, and a sha256 per dataset (for the manifest)."""
    rows, hashes = [], {}
    for spec in recipe.datasets:
        spec_rows = demo_rows(spec, recipe.method) if spec.is_demo else file_rows(spec)
        if not spec_rows:
            raise DataError(f"{spec.path}: the dataset is empty")
        hashes[spec.path] = hashlib.sha256(json.dumps(spec_rows, sort_keys=True).encode()).hexdigest()
        rows.extend(spec_rows)
    return rows, hashes


def demo_rows(spec: DatasetSpec, method: str) -> list[dict]:
    try:
        tasks = task_names(spec.path.removeprefix("demo:"))
    except ValueError as e:
        raise DataError(str(e)) from None
    samples = [s for task in tasks for s in demo_samples(task, "train")]
    if method in PREFERENCE_METHODS:
        return [{"prompt": user(s.prompt), "chosen": assistant(s.answer), "rejected": assistant(s.wrong)} for s in samples]
    return [{"prompt": user(s.prompt), "completion": assistant(s.answer)} for s in samples]


def file_rows(spec: DatasetSpec) -> list[dict]:
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise DataError(f"{spec.path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{spec.path}:{line_number}: malformed JSON ({e.msg})") from None
            rows.append(convert(record, spec.type, f"{spec.path}:{line_number}"))
    return rows


def convert(record, kind: str, where: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS[kind] if k not in record]
    if missing:
        raise DataError(f"{where}: {kind} records need {', '.join(REQUIRED_KEYS[kind])}; missing {', '.join(missing)}")
    if kind == "alpaca":
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return {"prompt": user(prompt), "completion": assistant(_text(record, "output", where))}
    if kind == "messages":
        return _split_conversation(record["messages"], where)
    if kind == "preference":
        prompt = record["prompt"]
        prompt = user(prompt) if isinstance(prompt, str) else prompt
        return {"prompt": prompt, "chosen": assistant(_text(record, "chosen", where)), "rejected": assistant(_text(record, "rejected", where))}
    return {"text": _text(record, "text", where)}


def _text(record: dict, key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key} must be a non-empty string")
    return value


def _split_conversation(messages, where: str) -> dict:
    """A chat -> prompt (everything before the last assistant turn) + completion (that turn)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message needs a role (system/user/assistant) and string content")
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise DataError(f"{where}: messages must end with an assistant turn after a prompt")
    return {"prompt": messages[:-1], "completion": messages[-1:]}
