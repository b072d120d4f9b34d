"""A sequence-classification LoRA (`tuneserve finetune classify`) loaded for inference.

The adapter is a PEFT SEQ_CLS directory (LoRA + the trained `score` head); its label names are in
its manifest. Shared by the classify stage's evaluation and the server's input guard.
"""

from pathlib import Path
from typing import Any

from tuneserve.artifacts import read_manifest
from tuneserve.engine import compute_dtype
from tuneserve.models import resolve_model
from tuneserve.models.errors import ModelError


class Classifier:
    """Label probabilities for texts: the base with the adapter merged in, on the CPU (bf16 where
    the CPU computes it natively, else float32)."""

    def __init__(self, model: Any, tokenizer: Any, labels: list[str]):
        self.model, self.tokenizer, self.labels = model, tokenizer, labels

    @classmethod
    def load(cls, adapter_dir: str | Path, model_dir: str | Path | None = None, labels: list[str] | None = None) -> "Classifier":
        """`model_dir`: the base (default: the one the adapter's manifest names, resolved)."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer


        adapter_dir = Path(adapter_dir)
        manifest = read_manifest(adapter_dir)
        labels = labels or (manifest.metrics.get("labels") if manifest else None)
        if not labels:
            raise ModelError(f"{adapter_dir}: not a classifier (its tuneserve.json names no labels; train it with `tuneserve finetune classify`)")
        if model_dir is None:
            if manifest is None:
                raise ModelError(f"{adapter_dir}: no tuneserve.json to name its base model")
            model_dir = resolve_model(manifest.base_model["name"])
        dtype = getattr(torch, compute_dtype())
        base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base.config.pad_token_id = base.config.pad_token_id or base.config.eos_token_id  # as in training
        model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()
        return cls(model, tokenizer, labels)

    def logits(self, texts: list[str], max_length: int = 512, batch_size: int = 16) -> list[list[float]]:
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            with torch.inference_mode():
                out += self.model(**batch).logits.float().tolist()
        return out

    def probabilities(self, texts: list[str], max_length: int = 512, batch_size: int = 16) -> list[dict[str, float]]:
        import torch

        rows = torch.tensor(self.logits(texts, max_length, batch_size)).softmax(-1)
        return [dict(zip(self.labels, row.tolist(), strict=True)) for row in rows]

    def window_probabilities(self, texts: list[str], window: int = 512, overlap: int = 64, batch_tokens: int = 8192,
                             is_cancelled=lambda: False) -> tuple[list[dict[str, float]], int]:
        """Label probabilities of every `window`-token piece of every text (consecutive pieces
        overlap by `overlap` tokens), so that nothing past the first window goes unread; and the
        number of tokens scored. Identical pieces are scored once; pieces are batched by length,
        up to `batch_tokens` a batch; `is_cancelled` is asked between batches (the rest is skipped)."""
        import torch

        step = window - overlap
        pieces: set[tuple[int, ...]] = set()
        for ids in self.tokenizer(texts, add_special_tokens=True).input_ids:
            pieces |= {tuple(ids[i:i + window]) for i in range(0, max(1, len(ids) - overlap), step)} if ids else set()
        ordered = sorted(pieces, key=len)
        rows: list[list[float]] = []
        start = 0
        while start < len(ordered) and not is_cancelled():
            end = start + 1
            while end < len(ordered) and len(ordered[end]) * (end + 1 - start) <= batch_tokens:
                end += 1
            batch = self.tokenizer.pad({"input_ids": [list(p) for p in ordered[start:end]]}, return_tensors="pt")
            with torch.inference_mode():
                rows += self.model(**batch).logits.float().softmax(-1).tolist()
            start = end
        return [dict(zip(self.labels, row, strict=True)) for row in rows], sum(map(len, ordered[:len(rows)]))
