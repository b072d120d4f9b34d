"""GRPO (TRL's GRPOTrainer): policy optimization on prompts, rewarded by a check or a reward model.

The reward is `exact` (1 when the sampled answer matches the prompt's reference answer exactly,
as the demo tasks are checked, else 0) or the directory of a reward model from `tuneserve
finetune reward` (its score of the answer). Training starts from the base, or from an SFT
adapter (`init_adapter`) that it continues; TRL then keeps a frozen copy of that adapter as the
reference the KL penalty (`rl_beta`) is measured against. The manifest records the held-out
reward and exact match before (the starting point) and after, and the KL and training reward
logged per step.
"""

from functools import partial
from pathlib import Path

from tuneserve.artifacts import read_manifest
from tuneserve.data import DataError
from tuneserve.evals.arena import RewardJudge
from tuneserve.evals.scoring import is_exact_match
from tuneserve.finetune.common import Run, demo_eval, train_and_save, trl_args
from tuneserve.finetune.recipe import Recipe
from tuneserve.models import ModelError
from tuneserve.models.identity import read_adapter_config
from tuneserve.models.training import load_for_training, lora_config


def run_grpo(recipe: Recipe, resume: bool = False, overwrite: bool = False, launch=None) -> Path:
    check_inputs(recipe)
    return train_and_save(recipe, grpo_trainer, resume, overwrite, evaluate=held_out_reward, launch=launch)


def check_inputs(recipe: Recipe) -> None:
    """The directories the recipe names exist and are what they should be (before a model loads)."""

    if recipe.init_adapter is not None:
        try:
            read_adapter_config(Path(recipe.init_adapter))
        except ModelError as e:
            raise DataError(f"init_adapter: {e}") from None
    if recipe.reward != "exact":

        manifest = read_manifest(recipe.reward)
        if manifest is None or manifest.kind != "reward-model":
            raise DataError(f"reward: {recipe.reward} is not a reward model from `tuneserve finetune reward` (or use exact)")


def grpo_trainer(run: Run):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer


    r = run.recipe
    model = load_for_training(run.model_dir, r, dtype=run.dtype)
    peft_config = lora_config(r) if r.is_peft else None
    if r.init_adapter:
        from peft import PeftModel

        model, peft_config = PeftModel.from_pretrained(model, r.init_adapter, is_trainable=True), None
    args = trl_args(
        run, GRPOConfig, has_eval=False, beta=r.rl_beta, num_generations=r.num_generations,
        max_completion_length=r.max_completion_length, temperature=r.temperature, log_completions=False,
    )
    # One step sees micro_batch_size completions: micro_batch_size / num_generations prompts.
    return GRPOTrainer(
        model=model, args=args, reward_funcs=reward_function(r.reward),
        train_dataset=Dataset.from_list(run.rows).shuffle(seed=r.seed),
        processing_class=AutoTokenizer.from_pretrained(run.model_dir), peft_config=peft_config,
    )


def reward_function(reward: str):
    """A TRL reward function: `exact`, or a reward model's score."""
    if reward == "exact":
        return exact_reward

    judge = RewardJudge(reward)

    def reward_model(prompts, completions, **_):
        return [judge.score(prompt, completion[0]["content"]) for prompt, completion in zip(prompts, completions, strict=True)]

    reward_model.__name__ = "reward_model"  # TRL logs each reward under its function's name
    return reward_model


def exact_reward(prompts, completions, answer, **_) -> list[float]:
    """1.0 where the completion is the reference answer (JSON answers compared by content), else 0.0."""

    return [float(is_exact_match(completion[0]["content"], ref)) for completion, ref in zip(completions, answer, strict=True)]


def held_out_reward(run: Run, adapter_dir: Path | None) -> dict | None:
    """Demo held-out scores of the starting point (adapter_dir None: the base or `init_adapter`)
    or of the result, with the mean reward of the greedy answers under the run's reward."""
    r = run.recipe
    start = Path(r.init_adapter) if r.init_adapter else None
    if r.reward == "exact":  # the exact reward of a greedy answer is its exact match
        result = demo_eval(run, adapter_dir or start)
        return None if result is None else result | {"reward": result["exact_match"]}
    return demo_eval(run, adapter_dir or start, score_outputs=partial(_mean_reward, reward_function(r.reward)))


def _mean_reward(reward, samples, outputs) -> dict:
    scores = reward([s.prompt for s in samples], [[{"role": "assistant", "content": o}] for o in outputs])
    return {"reward": sum(scores) / len(scores)}
