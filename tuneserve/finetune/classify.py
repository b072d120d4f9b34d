"""Sequence classification: the base with an N-label head, LoRA-trained (PEFT's SEQ_CLS task).

TRL has no classification trainer; transformers' Trainer does the fitting, with the same
arguments, checkpoints, resume and manifest as every other recipe.
"""

from pathlib import Path

from tuneserve.data import DataError
from tuneserve.data.guard import LABELS, guard_samples
from tuneserve.evals.classifier import Classifier
from tuneserve.finetune.common import Run, split, train_and_save, trl_args
from tuneserve.finetune.recipe import Recipe
from tuneserve.models.training import load_for_training, lora_config


def run_classify(recipe: Recipe, resume: bool = False, overwrite: bool = False, launch=None) -> Path:
    return train_and_save(recipe, classify_trainer, resume, overwrite, kind="classifier", evaluate=classifier_eval, launch=launch)


def label_names(run: Run) -> list[str]:
    """The recipe's labels, demo:guard's, or the data's sorted; every row's label must be one of them."""

    found = sorted({row["label"] for row in run.rows})
    names = run.recipe.labels or (LABELS if any(s.path == "demo:guard" for s in run.recipe.datasets) else found)
    unknown = [label for label in found if label not in names]
    if unknown:
        raise DataError(f"labels {unknown} are in the data but not in the recipe's labels {names}")
    if len(names) < 2:
        raise DataError(f"classify needs at least two labels; the data has {found}")
    return list(names)


def classify_trainer(run: Run):
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments


    r = run.recipe
    labels = label_names(run)
    run.metrics["labels"] = labels
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    train, val = split(run)

    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=r.sequence_len)
        return encoded | {"labels": [labels.index(label) for label in batch["label"]]}

    train, val = (None if d is None else d.map(encode, batched=True, remove_columns=d.column_names) for d in (train, val))
    model = load_for_training(run.model_dir, r, head="classify", num_labels=len(labels), dtype=run.dtype)
    model.config.id2label, model.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    if r.is_peft:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(r, task_type="SEQ_CLS"))
    return Trainer(
        model=model, args=trl_args(run, TrainingArguments, val is not None), train_dataset=train, eval_dataset=val,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
    )


def classifier_eval(run: Run, adapter_dir: Path | None) -> dict | None:
    """Accuracy on held-out demo:guard data (detection and false-positive rates, per attack style).

    Before training (adapter_dir None) the head is freshly initialised: expect about chance.
    File datasets have no held-out split of their own: their validation loss is what is reported.
    """
    import torch


    if run.recipe.eval_samples == 0 or not any(s.path == "demo:guard" for s in run.recipe.datasets):
        return None
    labels = label_names(run)
    samples = guard_samples("held_out")
    if adapter_dir is None:
        from transformers import AutoTokenizer

        torch.manual_seed(run.recipe.seed)  # the untrained head's initialisation, for the "before" score
        model = load_for_training(run.model_dir, run.recipe, head="classify", num_labels=len(labels), dtype=run.dtype).eval()
        classifier = Classifier(model, AutoTokenizer.from_pretrained(run.model_dir), labels)
    else:
        classifier = Classifier.load(adapter_dir, run.model_dir, labels)
    probs = classifier.probabilities([s.text for s in samples])
    return detection_report(samples, [p[labels[-1]] for p in probs])


def detection_report(samples, attack_probs: list[float], threshold: float = 0.5) -> dict:
    """Detection rate (attacks flagged), false-positive rate (benign flagged), accuracy, per style."""
    flagged = [p >= threshold for p in attack_probs]
    styles = sorted({s.style for s in samples})

    def rate(style: str) -> float:
        picked = [f for s, f in zip(samples, flagged, strict=True) if s.style == style]
        return sum(picked) / len(picked)

    attacks = [f for s, f in zip(samples, flagged, strict=True) if s.label != "benign"]
    benign = [f for s, f in zip(samples, flagged, strict=True) if s.label == "benign"]
    return {
        "num_samples": len(samples),
        "threshold": threshold,
        "accuracy": sum(f == (s.label != "benign") for s, f in zip(samples, flagged, strict=True)) / len(samples),
        "detection_rate": sum(attacks) / len(attacks),
        "false_positive_rate": sum(benign) / len(benign),
        "detection_by_style": {style: rate(style) for style in styles if style != "benign"},
    }
