"""Reward model: the base with a one-logit head, LoRA-trained to score chosen above rejected."""

from pathlib import Path

from tuneserve.evals import load_eval_samples
from tuneserve.finetune.common import Run, build_trainer, train_and_save
from tuneserve.finetune.recipe import Recipe
from tuneserve.models.training import load_for_training


def run_reward(recipe: Recipe, resume: bool = False, overwrite: bool = False, launch=None) -> Path:
    return train_and_save(recipe, reward_trainer, resume, overwrite, kind="reward-model", evaluate=pair_accuracy, launch=launch)


def reward_trainer(run: Run):
    from trl import RewardConfig, RewardTrainer

    return build_trainer(run, RewardTrainer, RewardConfig, head="reward")


def pair_accuracy(run: Run, adapter_dir: Path | None) -> dict | None:
    """How often the reward model scores chosen above rejected on held-out demo pairs.

    Before training (adapter_dir None) the head is freshly initialised: expect about chance.
    """
    import torch
    from transformers import AutoTokenizer


    if run.recipe.eval_samples == 0 or not any(spec.is_demo for spec in run.recipe.datasets):
        return None
    tasks = [spec.path.removeprefix("demo:") for spec in run.recipe.datasets if spec.is_demo]
    samples = [s for t in tasks for s in load_eval_samples(t, num_samples=run.recipe.eval_samples)]
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    model = load_reward_model(run, adapter_dir).eval()

    def score(sample, answer: str) -> float:
        messages = [*sample.prompt, {"role": "assistant", "content": answer}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            return model(**ids).logits[0, 0].item()

    wins = [score(s, s.answer) > score(s, s.rejected) for s in samples]
    return {"num_samples": len(wins), "preference_accuracy": sum(wins) / len(wins)}


def load_reward_model(run: Run, adapter_dir: Path | None):
    import torch
    from peft import PeftModel

    torch.manual_seed(run.recipe.seed)  # the untrained head's initialisation, for the "before" score
    base = load_for_training(run.model_dir, run.recipe, head="reward", dtype=run.dtype)
    if adapter_dir is None:
        return base

    return PeftModel.from_pretrained(base, adapter_dir)
