"""The options of `tuneserve finetune ...`, declared once (tuneserve/options.py builds the flags).

The recipe itself is a YAML file validated by `Recipe`; these are the command's own settings."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

FINETUNE_HELP = {
    "sft": ("Supervised finetuning (LoRA, QLoRA or full).", "qlora-demo.yaml --set max_steps=20"),
    "dpo": ("Direct preference optimization on prompt/chosen/rejected data.", "dpo-demo.yaml"),
    "orpo": ("Odds-ratio preference optimization (no reference model).", "orpo-demo.yaml"),
    "reward": ("Reward model (one-logit head + LoRA) on preference data.", "reward-demo.yaml"),
    "classify": ("Sequence-classification LoRA (PEFT SEQ_CLS) on text/label data, e.g. the prompt-injection guard.",
                 "classify-guard.yaml"),
    "grpo": ("GRPO: sample answers to prompts, reward them (exact check or a reward model), optimize; from the base or an "
             "SFT adapter.", "grpo-extract.yaml"),
}


class TrainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: Path = Field(description="Recipe YAML (see examples/recipes/).")
    set: list[str] = Field(default_factory=list, description="Override a recipe key: --set lora_r=8 (repeatable).")
    output_dir: str | None = Field(None, description="Where to write the adapter (overrides the recipe's output_dir).")
    resume: bool = Field(False, description="Continue from the last checkpoint of an interrupted run.")
    overwrite: bool = Field(False, description="Replace an existing output_dir.")
    num_processes: int = Field(1, ge=1, description="Train on N processes under `accelerate launch` (DDP; gloo on CPU).")
    config_file: Path | None = Field(None, description="Accelerate config (FSDP, DeepSpeed, several nodes; see examples/accelerate/).")


class EvalOptions(BaseModel):
    """Held-out exact match, perplexity (and preference accuracy for pairs), through vLLM.

    Example: tuneserve finetune eval --adapter runs/qlora-demo --task all
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Base model reference (default smollm2-135m-instruct).")
    adapter: str | None = Field(None, description="PEFT adapter directory to apply.")
    task: str | None = Field(None, description="Demo task: all, dates, units, extract, arithmetic.")
    data: str | None = Field(None, description="JSONL file with reference answers instead of a demo task.")
    data_type: str | None = Field(None, description="Type of data: alpaca, messages or preference.")
    num_samples: int = Field(50, ge=1, description="Demo samples per task.")

    @model_validator(mode="after")
    def _task_or_data(self):
        if self.task and self.data:
            raise ValueError("give task or data, not both")
        return self
