"""A recipe's datasets -> training rows (demo data in the method's format, files via tuneserve.data)."""

import hashlib
import json

from tuneserve.data import DataError, DatasetSpec, assistant, demo_samples, file_rows, task_names, user
from tuneserve.data.general import general_items
from tuneserve.data.guard import guard_samples
from tuneserve.finetune.recipe import PREFERENCE_METHODS, Recipe


def load_rows(recipe: Recipe) -> tuple[list[dict], dict[str, str]]:
    """All training rows of the recipe, and a sha256 per dataset (for the manifest)."""
    rows, hashes = [], {}
    for spec in recipe.datasets:
        spec_rows = demo_rows(spec, recipe.method) if spec.is_demo else file_rows(spec)
        if recipe.method == "grpo" and not spec.is_demo:  # GRPO samples its own answers; the file's are the references
            spec_rows = [{"prompt": row["prompt"], "answer": row["completion"][-1]["content"]} for row in spec_rows]
        if not spec_rows:
            raise DataError(f"{spec.path}: the dataset is empty")
        hashes[spec.path] = hashlib.sha256(json.dumps(spec_rows, sort_keys=True).encode()).hexdigest()
        rows.extend(spec_rows)
    if recipe.mix_general:
        general = general_rows(len(rows), recipe.mix_general, recipe.seed)
        hashes["general"] = hashlib.sha256(json.dumps(general, sort_keys=True).encode()).hexdigest()
        rows.extend(general)
    return rows, hashes


def general_rows(num_task_rows: int, fraction: float, seed: int) -> list[dict]:
    """Rows from the general suite's train split making up `fraction` of the mixed data (its items
    repeat when more are needed than it has). The held-out split, which the forgetting report
    scores, is never trained on."""
    import random


    items = general_items("train")
    count = round(num_task_rows * fraction / (1 - fraction))
    rng = random.Random(seed)
    picked = [items[i % len(items)] for i in range(count)]
    rng.shuffle(picked)
    return [{"prompt": user(i.prompt), "completion": assistant(i.answer)} for i in picked]


def demo_rows(spec: DatasetSpec, method: str) -> list[dict]:
    if spec.path == "demo:guard":

        return [{"text": s.text, "label": s.label} for s in guard_samples("train")]
    try:
        tasks = task_names(spec.path.removeprefix("demo:"))
    except ValueError as e:
        raise DataError(str(e)) from None
    samples = [s for task in tasks for s in demo_samples(task, "train")]
    if method == "grpo":
        return [{"prompt": user(s.prompt), "answer": s.answer} for s in samples]
    if method in PREFERENCE_METHODS:
        return [{"prompt": user(s.prompt), "chosen": assistant(s.answer), "rejected": assistant(s.wrong)} for s in samples]
    return [{"prompt": user(s.prompt), "completion": assistant(s.answer)} for s in samples]
