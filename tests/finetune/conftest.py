import pytest

from tuneserve.finetune.recipe import Recipe


@pytest.fixture()
def tiny_recipe(tmp_path):
    """A few steps of training on a small LoRA: enough to exercise the whole path on CPU."""
    def make(method: str = "sft", **overrides) -> Recipe:
        fields = dict(
            method=method, datasets=[{"path": "demo:dates"}], lora_r=8, lora_alpha=16,
            lora_target_modules=["q_proj", "v_proj"], max_steps=3, micro_batch_size=2,
            sequence_len=128, save_steps=2, logging_steps=1, val_set_size=0.0, eval_samples=0,
            output_dir=str(tmp_path / f"{method}-adapter"),
        )
        return Recipe.model_validate(fields | overrides)

    return make
