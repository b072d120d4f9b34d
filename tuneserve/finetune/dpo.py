"""Direct preference optimization; the reference model is the base (the adapter switched off)."""

from pathlib import Path

from tuneserve.finetune.common import Run, split, train_and_save, trl_args
from tuneserve.finetune.recipe import Recipe
from tuneserve.models.training import load_for_training, lora_config


def run_dpo(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> Path:
    return train_and_save(recipe, build_trainer, resume, overwrite)


def build_trainer(run: Run):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    r = run.recipe
    train, val = split(run)
    # With a PEFT model and no ref_model, TRL scores the reference by disabling the adapter.
    return DPOTrainer(
        model=load_for_training(run.model_dir, r),
        ref_model=None,
        args=trl_args(run, DPOConfig, val is not None, beta=r.rl_beta),
        train_dataset=train,
        eval_dataset=val,
        processing_class=AutoTokenizer.from_pretrained(run.model_dir),
        peft_config=lora_config(r) if r.is_peft else None,
    )
