"""Odds-ratio preference optimization: SFT and preference in one loss, no reference model."""

from pathlib import Path

from tuneserve.finetune.common import Run, build_trainer, train_and_save
from tuneserve.finetune.recipe import Recipe


def run_orpo(recipe: Recipe, resume: bool = False, overwrite: bool = False, launch=None) -> Path:
    return train_and_save(recipe, orpo_trainer, resume, overwrite, launch=launch)


def orpo_trainer(run: Run):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # TRL 1.16 moved ORPO here

    return build_trainer(run, ORPOTrainer, ORPOConfig, beta=run.recipe.rl_beta)
