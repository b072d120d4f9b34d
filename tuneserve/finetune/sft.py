"""Supervised finetuning (LoRA, QLoRA or full) with TRL's SFTTrainer."""

from pathlib import Path

from tuneserve.finetune.common import Run, build_trainer, train_and_save
from tuneserve.finetune.recipe import Recipe


def run_sft(recipe: Recipe, resume: bool = False, overwrite: bool = False, launch=None) -> Path:
    """Train, save the adapter (or model) with its manifest, and return its directory."""
    return train_and_save(recipe, sft_trainer, resume, overwrite, launch=launch)


def sft_trainer(run: Run):
    from trl import SFTConfig, SFTTrainer

    # prompt/completion rows: TRL computes the loss on completions unless train_on_inputs
    completion_only = not run.recipe.train_on_inputs
    return build_trainer(run, SFTTrainer, SFTConfig, completion_only_loss=completion_only, packing=run.recipe.sample_packing)
