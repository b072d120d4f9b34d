"""Supervised finetuning (LoRA, QLoRA or full) with TRL's SFTTrainer."""

from pathlib import Path

from tuneserve.finetune.common import Run, split, train_and_save, trl_args
from tuneserve.finetune.recipe import Recipe
from tuneserve.models.training import load_for_training, lora_config


def run_sft(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> Path:
    """Train, save the adapter (or model) with its manifest, and return its directory."""
    return train_and_save(recipe, build_trainer, resume, overwrite)


def build_trainer(run: Run):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    r = run.recipe
    train, val = split(run)
    args = trl_args(run, SFTConfig, val is not None, completion_only_loss=not r.train_on_inputs, packing=r.sample_packing)
    return SFTTrainer(
        model=load_for_training(run.model_dir, r),
        args=args,
        train_dataset=train,
        eval_dataset=val,
        processing_class=AutoTokenizer.from_pretrained(run.model_dir),
        peft_config=lora_config(r) if r.is_peft else None,
    )
