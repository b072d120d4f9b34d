"""GRPO (TRL) on a demo task, rewarded by the exact check, continuing an SFT adapter."""

import pytest
import torch
from safetensors.torch import load_file

from tuneserve.artifacts import read_manifest
from tuneserve.finetune import DataError, run_grpo, run_sft
from tuneserve.finetune.grpo import exact_reward
from tuneserve.finetune.recipe import Recipe


def test_exact_reward_checks_answers_like_the_held_out_evaluation():
    completions = [[{"role": "assistant", "content": text}] for text in
                   ['{"name": "Lena", "age": 31}', '{"age":31,"name":"Lena"}', '{"name": "Lena", "age": "31"}',
                    '```json\n{"name": "Lena", "age": 31}\n```', "2026-01-02", " 2026-01-02\n"]]
    answers = ['{"name": "Lena", "age": 31}'] * 4 + ["2026-01-02"] * 2
    assert exact_reward([None] * 6, completions, answers) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_grpo_recipes_are_checked_before_a_model_loads(tiny_recipe, tmp_path):
    with pytest.raises(ValueError, match="multiple of num_generations"):
        tiny_recipe("grpo", micro_batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="grpo needs prompts with reference answers"):
        tiny_recipe("grpo", datasets=[{"path": "pairs.jsonl", "type": "preference"}], micro_batch_size=8, num_generations=4)
    with pytest.raises(ValueError, match="init_adapter continues a LoRA adapter"):
        tiny_recipe("grpo", adapter="qlora", init_adapter=str(tmp_path), micro_batch_size=8, num_generations=4)
    # Directories are checked when the run starts, still before a model loads.
    with pytest.raises(DataError, match="init_adapter"):
        run_grpo(tiny_recipe("grpo", init_adapter=str(tmp_path), micro_batch_size=8, num_generations=4))
    with pytest.raises(DataError, match="is not a reward model"):
        run_grpo(tiny_recipe("grpo", reward="examples/adapters/dates", micro_batch_size=8, num_generations=4))
    assert not (tmp_path / "grpo-adapter").exists()


@pytest.fixture(scope="module")
def sft_start(tmp_path_factory):
    """A weak SFT starting point: 4 steps on 'extract' examples (with 2 steps at 1e-4 every float32 sample scored 0: no signal)."""
    out = tmp_path_factory.mktemp("sft") / "adapter"
    return run_sft(Recipe(
        datasets=[{"path": "demo:extract"}], lora_r=16, lora_alpha=32, lora_dropout=0.0, max_steps=4,
        learning_rate=3e-4, lr_scheduler="constant", micro_batch_size=8, sequence_len=128, val_set_size=0.0,
        eval_samples=0, output_dir=str(out),
    ))


def test_grpo_continues_the_sft_adapter_and_records_reward_and_kl(sft_start, tmp_path):
    out = run_grpo(Recipe(
        method="grpo", datasets=[{"path": "demo:extract"}], init_adapter=str(sft_start), lora_r=16, lora_alpha=32,
        lora_dropout=0.0, num_generations=4, micro_batch_size=8, max_completion_length=24, max_steps=2,
        learning_rate=5e-5, rl_beta=0.04, logging_steps=1, eval_samples=0, output_dir=str(tmp_path / "grpo"),
    ))
    manifest = read_manifest(out)
    assert manifest.kind == "adapter" and manifest.recipe["method"] == "grpo"
    metrics = manifest.metrics
    # TRL logged one mean reward and one KL (to the frozen copy of the SFT adapter) per step.
    assert [step for step, _ in metrics["reward_history"]] == [1, 2]
    assert [step for step, _ in metrics["kl_history"]] == [1, 2]
    # Each step's reward is the mean exact-match reward of its 2 prompts x 4 generations: a multiple
    # of 1/8 (a partial-credit or broken reward would not be); the first step's KL is zero because
    # the frozen reference starts equal to the policy (the SFT adapter).
    assert all(abs(reward * 8 - round(reward * 8)) < 1e-6 for _, reward in metrics["reward_history"])
    assert abs(metrics["kl_history"][0][1]) < 1e-3
    # The adapter saved is the trained policy, not TRL's frozen reference copy, and it is the SFT
    # adapter moved by GRPO: same tensors, different values.
    start, trained = load_file(sft_start / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert set(trained) == set(start)
    assert not any(".ref." in name for name in trained)
    assert any(not torch.equal(trained[name], start[name]) for name in start), metrics["reward_history"]


@pytest.mark.slow
def test_grpo_raises_held_out_exact_match_over_the_sft_start(sft_start, tmp_path):
    """The README's run, shorter: 20 GRPO steps from the weak SFT start, scored on 50 held-out prompts."""
    out = run_grpo(Recipe(
        method="grpo", datasets=[{"path": "demo:extract"}], init_adapter=str(sft_start), lora_r=16, lora_alpha=32,
        lora_dropout=0.0, num_generations=8, micro_batch_size=16, max_completion_length=32, max_steps=20,
        learning_rate=5e-5, lr_scheduler="constant", rl_beta=0.04, logging_steps=1, eval_samples=50,
        output_dir=str(tmp_path / "grpo"),
    ))
    metrics = read_manifest(out).metrics
    before, after = metrics["eval_before"], metrics["eval_after"]
    print(f"GRPO: held-out exact match {before['exact_match']:.2f} -> {after['exact_match']:.2f}, "
          f"final KL {metrics['kl_history'][-1][1]}")
    assert after["reward"] == after["exact_match"]
    assert after["exact_match"] >= before["exact_match"] + 0.1  # 50 prompts: 5 more right answers
