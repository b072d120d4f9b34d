"""Dataset files -> rows in TRL's conversational formats, checked line by line.

Prompt/completion conversations (alpaca, messages), preference rows (prompt/chosen/rejected) or
{"text"}. Finetune, quantize (calibration) and distill (prompts) all read data through here.
"""

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneserve.errors import UserError

REQUIRED_KEYS = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "text": ("text",),
    "classification": ("text", "label"),
}


class DataError(UserError, ValueError):
    """A dataset that cannot be used; the message names the file, line and field."""


DatasetType = Literal["alpaca", "messages", "preference", "text", "classification", "demo"]


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="A JSONL file, or `demo:<task>` (`demo:all` for every demo task).")
    type: DatasetType | None = Field(
        None,
        description="alpaca (instruction/input/output), messages (chat), preference "
        "(prompt/chosen/rejected), text, classification (text/label); inferred for demo data.",
    )

    @property
    def is_demo(self) -> bool:
        return self.path.startswith("demo:")

    @model_validator(mode="after")
    def _type_given(self):
        if self.type is None and not self.is_demo:
            raise ValueError(f"{self.path}: give its type (alpaca, messages, preference, text or classification)")
        if self.type == "demo" and not self.is_demo:
            raise ValueError(f"{self.path}: type 'demo' is only for demo:<task> paths")
        return self



def spread(rows: list, count: int) -> list:
    """At most `count` rows taken evenly over all of `rows` (demo data lists task after task)."""
    return rows[:: max(1, len(rows) // count)][:count]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


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
    if kind == "classification":
        label = record["label"]
        if not isinstance(label, (str, int)) or isinstance(label, bool) or label == "":
            raise DataError(f"{where}: label must be a non-empty string or an integer")
        return {"text": _text(record, "text", where), "label": str(label)}
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
