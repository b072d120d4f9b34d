"""A reward model learns to score chosen above rejected on held-out pairs, then judges and rewards with it."""

from tuneserve.artifacts import read_manifest
from tuneserve.finetune import run_reward


def test_reward_model_beats_chance_on_held_out_pairs(tiny_recipe):
    recipe = tiny_recipe(
        "reward", max_steps=30, micro_batch_size=4, learning_rate=5e-4, eval_samples=40,
        lora_r=8, lora_target_modules=["q_proj", "v_proj"],
    )
    out = run_reward(recipe)
    manifest = read_manifest(out)
    assert manifest.kind == "reward-model"
    before = manifest.metrics["eval_before"]["preference_accuracy"]
    after = manifest.metrics["eval_after"]["preference_accuracy"]
    assert manifest.metrics["eval_after"]["num_samples"] == 40
    print(f"reward preference accuracy: untrained head {before:.2f} -> trained {after:.2f}")
    assert after >= 0.75  # chance is 0.5; 40 pairs make 0.75 ~3 standard deviations above it
    assert after > before

    # The same model as the arena's automatic judge: it prefers the right answer of held-out pairs.
    from tuneserve.evals import load_eval_samples
    from tuneserve.evals.arena import RewardJudge

    judge = RewardJudge(out)
    samples = load_eval_samples("dates", num_samples=20)
    verdicts = [judge.winner(s, s.answer, s.rejected) for s in samples] + [judge.winner(s, s.rejected, s.answer) for s in samples]
    right = verdicts[:20].count("a") + verdicts[20:].count("b")
    print(f"reward judge picks the right answer in {right} of 40 battles")
    assert right >= 30

    # And as GRPO's reward: one step on its prompts, each sampled answer scored by the reward model.
    from tuneserve.finetune import run_grpo

    grpo = run_grpo(tiny_recipe("grpo", reward=str(out), num_generations=2, micro_batch_size=4, max_completion_length=12,
                                max_steps=1, output_dir=str(out.parent / "grpo")))
    rewards = [value for _, value in read_manifest(grpo).metrics["reward_history"]]
    print("GRPO on the reward model: mean reward of the sampled answers", rewards)
    assert len(rewards) == 1 and rewards[0] not in (0.0, 1.0)  # a score, not the exact check's 0/1
