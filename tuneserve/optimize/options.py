"""The options of each optimize command, declared once: flag, help, YAML key and validation.

`tuneserve optimize <command>` builds its flags from these models (tuneserve/options.py) and
`--config FILE` reads the same keys; each stage function takes its options object.
"""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BITS = (32, 16, 8, 4)


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="Output directory.")
    overwrite: bool = Field(False, description="Replace an existing output directory.")


class MergeOptions(Output):
    """Fold an adapter into a full bf16 model and report logit/greedy parity."""

    adapter: str = Field(description="PEFT adapter directory.")
    base: str | None = Field(None, description="Base model (default: the one in the adapter's manifest).")
    mode: Literal["dequantized", "original"] | None = Field(
        None, description="dequantized (the QLoRA default: into the 4-bit base it trained on, dequantized) or original."
    )


class Calibrated(Output):
    model: str | None = Field(None, description="Model reference (default smollm2-135m-instruct).")
    calibration: str = Field("all", description="Calibration data: a demo task (all, dates, ...) or a JSONL file.")
    samples: int = Field(128, ge=16, description="Calibration samples.")
    eval_samples: int = Field(50, ge=0, description="Held-out demo samples per task for before/after quality (0: skip).")


class QuantizeOptions(Calibrated):
    """Quantize with llm-compressor; report size, perplexity and demo accuracy before and after."""

    scheme: Literal["w4a16", "w8a8"] = Field("w4a16", description="w4a16 (GPTQ) or w8a8 (SmoothQuant + GPTQ).")


class PruneOptions(Calibrated):
    """Prune with SparseGPT (llm-compressor); report the zeros written, size, perplexity and demo accuracy."""

    structure: str = Field("2:4", description="N:M (2:4: two of every four weights zero) or unstructured.")
    sparsity: float | None = Field(None, gt=0, lt=1, description="Fraction of weights to zero (unstructured; N:M implies N/M).")
    quantize: Literal["w4a16", "w8a8"] | None = Field(None, description="Then quantize: w4a16 or w8a8 (rounding, which keeps the zeros).")

    @field_validator("structure")
    @classmethod
    def _n_of_m(cls, v):
        match = re.fullmatch(r"(\d+):(\d+)", v)
        if v != "unstructured" and not (match and 0 < int(match[1]) < int(match[2])):
            raise ValueError(f"must be N:M with 0 < N < M (e.g. 2:4) or unstructured, got {v!r}")
        return v

    @model_validator(mode="after")
    def _sparsity_fits(self):
        if self.structure == "unstructured" and self.sparsity is None:
            raise ValueError("sparsity: unstructured pruning needs a sparsity between 0 and 1")
        if self.structure != "unstructured" and self.sparsity is not None and abs(self.sparsity - self.target_sparsity) > 1e-9:
            raise ValueError(f"sparsity {self.sparsity} contradicts structure {self.structure} (which is sparsity "
                             f"{self.target_sparsity:g}); give one")
        return self

    @property
    def target_sparsity(self) -> float:
        if self.structure == "unstructured":
            return self.sparsity
        n, m = map(int, self.structure.split(":"))
        return n / m

    @property
    def mask(self) -> str:
        """llm-compressor's mask structure: "N:M", or "0:0" for unstructured."""
        return "0:0" if self.structure == "unstructured" else self.structure


class DistillOptions(Output):
    """Distill the teacher into a smaller student (a draft model for speculative decoding)."""

    teacher: str | None = Field(None, description="Teacher model (default smollm2-135m-instruct).")
    student_layers: int | None = Field(None, ge=1, description="Build the student from this many of the teacher's layers.")
    student: str | None = Field(None, description="Or start from this model (same tokenizer).")
    data: str = Field("all", description="Prompts: a demo task (all, dates, ...) or an alpaca JSONL file.")
    steps: int = Field(200, ge=1, description="Training steps.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (cosine decay).")
    batch_size: int = Field(8, ge=1, description="Prompts per step.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the KL term.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KL term (1 - alpha for cross-entropy).")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Autocast of the student's forward pass (its weights and optimizer state stay float32). auto: "
        "bfloat16 on a GPU or a CPU that computes it natively (AVX512-BF16, AMX), else float32.",
    )
    eval_samples: int = Field(50, ge=0, description="Held-out demo samples per task (0: skip).")

    @model_validator(mode="after")
    def _one_student(self):
        if (self.student_layers is None) == (self.student is None):
            raise ValueError("give one of student_layers (a student built from the teacher's layers) or student (a model)")
        return self


class ExportOptions(Output):
    """Export to GGUF with an Ollama Modelfile, then load it back and report parity with the source."""

    model: str | None = Field(None, description="Model to export, e.g. a merged adapter (default smollm2-135m-instruct).")
    format: Literal["gguf"] = Field("gguf", description="gguf (llama.cpp, Ollama, LM Studio).")
    type: Literal["f16", "bf16", "q8_0", "f32"] = Field("f16", description="f16, bf16, q8_0 or f32.")
    check: bool = Field(True, description="Load the file back with transformers and compare with the source.")


class EstimateOptions(BaseModel):
    """Memory: weights (P x 4 bytes / (32/Q) x 1.2) plus KV cache; measured with measure."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model reference (default smollm2-135m-instruct).")
    bits: list[Literal[32, 16, 8, 4]] = Field(list(BITS), min_length=1, description="32, 16, 8 or 4 (repeatable; default all).")
    context: int = Field(2048, ge=1, description="Tokens per sequence for the KV cache.")
    batch: int = Field(1, ge=1, description="Sequences held at once.")
    measure: bool = Field(False, description="Also load the model at each width and measure its weights.")
    tensor_parallel_size: int = Field(1, ge=1, description="Devices each layer is sharded over (per-device column).")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages (per-device column).")
