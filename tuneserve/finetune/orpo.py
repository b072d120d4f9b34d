"""Odds-ratio preference optimization: SFT and preference in one loss, no reference model."""

from pathlib import Path

from tuneserve.finetune.common import Run, split, train_and_save, trl_args
from tuneserve.finetune.recipe import Recipe
from tuneserve.models.training import load_for_training, lora_config


def run_orpo(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> Path:
    return train_and_save(recipe, build_trainer, resume, overwrite)


def build_trainer(run: Run):
    from transformers import AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # TRL 1.16 moved ORPO here

    r = run.recipe
    train, val = split(run)
    return ORPOTrainer(
        model=load_for_training(run.model_dir, r),
        args=trl_args(run, ORPOConfig, val is not None, beta=r.rl_beta),
        train_dataset=train,
        eval_dataset=val,
        processing_class=AutoTokenizer.from_pretrained(run.model_dir),
        peft_config=lora_config(r) if r.is_peft else None,
    )
