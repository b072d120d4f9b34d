"""Greedy agreement of served settings with transformers: is a faster setting still correct?

Each setting's server answers every prompt greedily; transformers (float32, eager PyTorch) is
the reference. A setting that changes answers only on near-ties agrees almost everywhere; one
that computes something else (a miscompiled graph) disagrees broadly.
"""

from pathlib import Path

import httpx

from tuneserve.data import demo_samples, task_names
from tuneserve.engine import chat_prompt_ids

GENERAL_PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three colors.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "Translate 'good morning' into Spanish.",
    "Give me a synonym for happy.",
    "How many days are in a week?",
    "What is the largest planet in our solar system?",
    "Explain in one sentence what a computer is.",
]


def agreement_prompts(num_per_task: int = 10) -> list[str]:
    """The demo tasks' first held-out prompts, then general questions."""

    return [s.prompt for t in task_names("all") for s in demo_samples(t, "held_out")[:num_per_task]] + GENERAL_PROMPTS


def reference_answers(model_dir: Path, prompts: list[str], max_tokens: int) -> list[str]:
    """transformers float32 greedy answers (the chat template applied as the server applies it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])])
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


def served_answers(base_url: str, model: str, prompts: list[str], max_tokens: int) -> list[str]:
    answers = []
    with httpx.Client(base_url=base_url, timeout=300) as client:
        for prompt in prompts:
            response = client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0})
            response.raise_for_status()
            answers.append(response.json()["choices"][0]["message"]["content"])
    return answers


def greedy_agreement(answers: list[str], reference: list[str]) -> float:
    """Share of prompts whose answer equals the reference exactly."""
    return sum(a == r for a, r in zip(answers, reference, strict=True)) / len(reference)
