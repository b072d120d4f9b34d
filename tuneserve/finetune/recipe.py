"""Finetune recipes: YAML in axolotl's vocabulary, validated before any model loads."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneserve.config import ConfigError, load_config
from tuneserve.data import DatasetSpec
from tuneserve.models.aliases import DEFAULT_MODEL

Method = Literal["sft", "dpo", "orpo", "reward", "classify", "grpo"]
PREFERENCE_METHODS = ("dpo", "orpo", "reward")
class Recipe(BaseModel):
    """Everything a training run needs. Each field is also a `--set key=value` override."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field("sft", description="sft, dpo, orpo, reward, classify or grpo (set by the subcommand).")
    base_model: str = Field(DEFAULT_MODEL, description="Any model reference tuneserve resolves.")
    adapter: Literal["qlora", "lora", "full"] = Field("lora", description="qlora: LoRA on a 4-bit base; full: every weight.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Weights and autocast while training. auto: bfloat16 on a GPU or a CPU that computes it "
        "natively (AVX512-BF16, AMX); float32 on other CPUs, where bfloat16 is emulated and several times slower.",
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="QLoRA 4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="QLoRA: quantize the quantization constants too.")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="QLoRA compute dtype.")
    bnb_4bit_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="How the packed 4-bit weights are stored; QLoRA + FSDP needs bfloat16 (examples/accelerate/fsdp-qlora.yaml).",
    )
    lora_r: int = Field(16, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_target_modules: str | list[str] = Field("all-linear", description="Module names, or all-linear.")
    peft_use_rslora: bool = Field(False, description="Rank-stabilized LoRA (scale = alpha / sqrt(r)).")
    peft_use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    datasets: list[DatasetSpec] = Field(min_length=1, description="Training data; each JSONL or demo:<task>.")
    val_set_size: float = Field(0.05, ge=0, lt=1, description="Fraction held out for validation loss.")
    train_on_inputs: bool = Field(False, description="Also compute loss on prompts (default: completions only).")
    sample_packing: bool = Field(False, description="Pack several short samples into one sequence.")
    sequence_len: int = Field(512, ge=16, description="Longest tokenized sample; longer ones are truncated.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    micro_batch_size: int = Field(8, ge=1, description="Samples per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="On N processes the effective batch is N times larger: scale learning_rate by N (linear), "
        "sqrt(N), or leave it (none). The manifest records the rate used.",
    )
    labels: list[str] | None = Field(
        None, description="classify: the label names, in the order of the head's outputs (default: demo:guard's, or the "
        "data's labels sorted). The last one is the positive class detection rates are reported for.",
    )
    mix_general: float = Field(
        0.0, ge=0, lt=1, description="sft: this fraction of the training rows comes from the general suite's train split "
        "(facts and instructions), against forgetting. `tuneserve eval forgetting` measures the effect.",
    )
    rl_beta: float = Field(0.1, gt=0, description="DPO beta / ORPO lambda / GRPO's KL coefficient.")
    init_adapter: str | None = Field(
        None, description="grpo: the adapter to continue (an SFT adapter of base_model; its rank and target modules, "
        "not the lora_* keys, apply); a frozen copy of it is the KL reference. Default: a new LoRA on the base.",
    )
    reward: str = Field(
        "exact", description="grpo: exact (1 when a sampled answer is the reference answer, else 0) or the directory "
        "of a reward model from `tuneserve finetune reward`.",
    )
    num_generations: int = Field(8, ge=2, description="grpo: answers sampled per prompt (the group advantages compare).")
    max_completion_length: int = Field(48, ge=1, description="grpo: tokens per sampled answer at most.")
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature of the answers.")
    seed: int = Field(42, description="Seed for data order, dropout and the validation split.")
    logging_steps: int = Field(5, ge=1, description="Log every N steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (for --resume).")
    report_to: list[str] = Field(default_factory=list, description="Trackers: tensorboard, wandb, ... (none by default).")
    eval_samples: int = Field(50, ge=0, description="Held-out demo samples per task scored before and after training (0: skip).")
    output_dir: str = Field(description="Where the adapter (or model) is written.")

    @field_validator("lora_target_modules")
    @classmethod
    def _targets(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("give at least one module name, or all-linear")
        return v

    @model_validator(mode="after")
    def _fits_method(self):
        preference = self.method in PREFERENCE_METHODS
        if self.method == "grpo":
            self._fits_grpo()
        for spec in self.datasets:
            if (self.method == "classify") != (spec.type == "classification" or spec.path == "demo:guard"):
                raise ValueError(
                    f"classify trains on classification data (text/label) or demo:guard; {spec.path} is {spec.type or 'demo'}"
                    if self.method == "classify" else f"{spec.path} is classification data; train it with `tuneserve finetune classify`"
                )
            if spec.type in ("alpaca", "messages", "text") and preference:
                raise ValueError(f"{self.method} needs preference data; {spec.path} is {spec.type}")
            if spec.type == "preference" and not preference:
                raise ValueError(f"sft needs alpaca, messages or text data; {spec.path} is preference")
        if self.adapter == "full" and self.method in ("reward", "classify"):
            raise ValueError(f"{self.method} trains a LoRA adapter with a new head here; use adapter: lora or qlora")
        if self.mix_general and self.method != "sft":
            raise ValueError("mix_general applies to sft recipes")
        if self.labels is not None and (self.method != "classify" or len(set(self.labels)) != len(self.labels) or len(self.labels) < 2):
            raise ValueError("labels: give at least two distinct names, and only for classify")
        return self

    def _fits_grpo(self) -> None:
        for spec in self.datasets:
            if spec.type not in (None, "alpaca", "messages") or spec.path == "demo:guard":
                raise ValueError(f"grpo needs prompts with reference answers (demo tasks, alpaca or messages); {spec.path} is {spec.type or 'classification'}")
        if self.micro_batch_size % self.num_generations:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must be a multiple of num_generations ({self.num_generations}): "
                             "each step samples num_generations answers for micro_batch_size / num_generations prompts")
        if self.init_adapter is not None and self.adapter != "lora":
            raise ValueError("init_adapter continues a LoRA adapter: use adapter: lora")

    @property
    def is_peft(self) -> bool:
        return self.adapter != "full"

    def work_dir(self) -> Path:
        """Checkpoints live beside the output until the run succeeds."""
        out = Path(self.output_dir)
        return out.with_name(f".{out.name}.checkpoints")


def load_recipe(path: str | Path, method: str, sets: list[str], **flags) -> Recipe:
    """Recipe YAML + `--set key=value` overrides + flags; the subcommand fixes the method."""
    import yaml


    overrides = dict(flags)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        declared = (yaml.safe_load(Path(path).read_text()) or {}).get("method")
    except Exception:  # unreadable or not a mapping: load_config reports it properly
        declared = None
    for source, value in (("the recipe", declared), ("--set", overrides.get("method"))):
        if value not in (None, method):
            raise ConfigError(f"{path}: {source} says method {value}; run `tuneserve finetune {value}`")
    return load_config(Recipe, path, as_flags=False, **overrides | {"method": method})
