"""Finetune: YAML recipes -> TRL trainers (SFT, DPO, ORPO, reward, classify, GRPO) -> PEFT adapters + manifests."""

from tuneserve.data import DataError
from tuneserve.evals import run_eval
from tuneserve.finetune.classify import classify_trainer, run_classify
from tuneserve.finetune.dpo import dpo_trainer, run_dpo
from tuneserve.finetune.grpo import grpo_trainer, run_grpo
from tuneserve.finetune.launch import Launch
from tuneserve.finetune.orpo import orpo_trainer, run_orpo
from tuneserve.finetune.recipe import Recipe
from tuneserve.finetune.reward import reward_trainer, run_reward
from tuneserve.finetune.sft import run_sft, sft_trainer

RUNNERS = {"sft": run_sft, "dpo": run_dpo, "orpo": run_orpo, "reward": run_reward, "classify": run_classify, "grpo": run_grpo}
# What a worker process of a multi-process run builds, and the artifact kind it writes.
TRAINERS = {"sft": (sft_trainer, "adapter"), "dpo": (dpo_trainer, "adapter"), "orpo": (orpo_trainer, "adapter"),
            "reward": (reward_trainer, "reward-model"), "classify": (classify_trainer, "classifier"),
            "grpo": (grpo_trainer, "adapter")}

__all__ = ["RUNNERS", "TRAINERS", "DataError", "Launch", "Recipe", "run_classify", "run_dpo", "run_eval", "run_grpo", "run_orpo", "run_reward", "run_sft"]
