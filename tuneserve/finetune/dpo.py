"""Direct preference optimization; the reference model is the base (the adapter switched off)."""

from pathlib import Path

from tuneserve.finetune.common import Run, build_trainer, train_and_save
from tuneserve.finetune.recipe import Recipe


def run_dpo(recipe: Recipe, resume: bool = False, overwrite: bool = False, launch=None) -> Path:
    return train_and_save(recipe, dpo_trainer, resume, overwrite, launch=launch)


def dpo_trainer(run: Run):
    from trl import DPOConfig, DPOTrainer

    return build_trainer(run, DPOTrainer, DPOConfig, beta=run.recipe.rl_beta)
