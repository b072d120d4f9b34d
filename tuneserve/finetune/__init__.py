"""Finetune: YAML recipes -> TRL trainers (SFT, DPO, ORPO, reward) -> PEFT adapters + manifests."""

from tuneserve.data import DataError
from tuneserve.evals import run_eval
from tuneserve.finetune.dpo import run_dpo
from tuneserve.finetune.orpo import run_orpo
from tuneserve.finetune.recipe import Recipe
from tuneserve.finetune.reward import run_reward
from tuneserve.finetune.sft import run_sft

RUNNERS = {"sft": run_sft, "dpo": run_dpo, "orpo": run_orpo, "reward": run_reward}

__all__ = ["RUNNERS", "DataError", "Recipe", "run_dpo", "run_eval", "run_orpo", "run_reward", "run_sft"]
