"""Loading a model for training: 4-bit quantization, LoRA config, the model itself.

Shared by every finetune recipe (and by merge, which must rebuild the base an adapter saw).
"""

from pathlib import Path
from typing import Any


def quantization_config(quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "bfloat16",
                        quant_storage: str = "uint8"):
    """bitsandbytes 4-bit settings for QLoRA (a float `quant_storage` lets FSDP shard the 4-bit weights)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, quant_storage),
    )


def lora_config(recipe: Any, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.lora_target_modules,
        use_rslora=recipe.peft_use_rslora,
        use_dora=recipe.peft_use_dora,
        task_type=task_type,
        # the reward head is new: train it in full alongside the adapter
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def load_for_training(model_dir: Path, recipe: Any, head: str = "causal-lm", num_labels: int = 1, dtype: str = "bfloat16"):
    """The base model in `dtype`, or 4-bit for QLoRA; `head` is causal-lm, reward (1 logit) or
    classify (`num_labels` logits)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict = {"dtype": getattr(torch, dtype)}
    if recipe.adapter == "qlora":
        kwargs["quantization_config"] = quantization_config(
            recipe.bnb_4bit_quant_type, recipe.bnb_4bit_use_double_quant, recipe.bnb_4bit_compute_dtype,
            recipe.bnb_4bit_quant_storage,
        )
    if head in ("reward", "classify"):
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels if head == "classify" else 1, **kwargs)
        model.config.pad_token_id = model.config.pad_token_id or model.config.eos_token_id
        return model
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
