"""Distill a teacher into a smaller student that shares its tokenizer (usable as a draft model).

The student starts as a copy of the teacher with only some decoder layers kept (evenly spaced,
first and last included). It is trained on the teacher's own greedy answers to the data's
prompts (sequence-level distillation) with a loss that matches the teacher's token
distributions (KL at a temperature) plus plain cross-entropy. Teacher, untrained student and
trained student are scored on the same held-out demo samples.
"""

import math
from pathlib import Path

from tuneserve.artifacts import Manifest, atomic_artifact, refuse_existing, write_manifest
from tuneserve.data import DataError, DatasetSpec, demo_samples, file_rows, spread, task_names
from tuneserve.engine import chat_prompt_ids, compute_dtype
from tuneserve.evals import evaluate, greedy_answers, load_eval_samples
from tuneserve.models import model_facts, resolve_model
from tuneserve.models.identity import base_identity
from tuneserve.optimize.errors import OptimizeError
from tuneserve.optimize.options import DistillOptions


def student_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Evenly spaced teacher layer indices, always keeping the first and the last."""
    if not 1 <= num_student_layers < num_teacher_layers:
        raise OptimizeError(f"student_layers must be between 1 and {num_teacher_layers - 1}, got {num_student_layers}")
    if num_student_layers == 1:
        return [0]
    step = (num_teacher_layers - 1) / (num_student_layers - 1)
    return sorted({round(i * step) for i in range(num_student_layers)})


def build_student(teacher_dir: Path, out_dir: Path, num_layers: int) -> list[int]:
    """Write a student checkpoint made of the chosen teacher layers; returns their indices."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16)
    keep = student_layers(teacher.config.num_hidden_layers, num_layers)
    teacher.model.layers = torch.nn.ModuleList(teacher.model.layers[i] for i in keep)
    for new_index, layer in enumerate(teacher.model.layers):
        layer.self_attn.layer_idx = new_index  # the KV cache is indexed by position in the stack
    teacher.config.num_hidden_layers = len(keep)
    if getattr(teacher.config, "layer_types", None):
        teacher.config.layer_types = [teacher.config.layer_types[i] for i in keep]
    teacher.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out_dir)
    return keep


def distill_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher || student) at temperature T + (1 - alpha) * cross-entropy.

    Positions whose label is -100 (padding, prompt) are left out of both terms.
    """
    import torch.nn.functional as F

    mask = labels != -100
    s, t = student_logits[mask].float(), teacher_logits[mask].float()
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True, reduction="batchmean")
    ce = F.cross_entropy(s, labels[mask])
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def run_distill(options: DistillOptions) -> Path:
    """`tuneserve optimize distill`: build (or take) a student, distill, evaluate, save."""
    o = options
    refuse_existing(o.out, o.overwrite)
    teacher_dir = resolve_model(o.teacher)
    prompts = spread(_prompts(o.data), o.steps * o.batch_size)  # the teacher answers only what training sees
    held_out = load_eval_samples("all", num_samples=o.eval_samples) if o.eval_samples else []
    with atomic_artifact(o.out, overwrite=o.overwrite) as tmp:
        kept = None
        if o.student is None:
            kept = build_student(teacher_dir, tmp, o.student_layers)
        else:
            _copy_student(resolve_model(o.student), teacher_dir, tmp)
        texts, teacher_eval = _teacher_answers(teacher_dir, prompts, held_out)  # one engine for both
        metrics = {"eval_teacher": teacher_eval, "eval_student_before": evaluate(tmp, held_out)} if held_out else {}
        metrics |= _train(tmp, teacher_dir, texts, o.steps, o.learning_rate, o.batch_size, o.temperature, o.alpha, o.dtype)
        if held_out:
            metrics["eval_student_after"] = evaluate(tmp, held_out)
        write_manifest(tmp, Manifest(
            kind="student",
            base_model=base_identity(o.teacher or teacher_dir.name, teacher_dir),
            recipe={"distill": {"data": o.data, "teacher_layers_kept": kept, "steps": o.steps, "learning_rate": o.learning_rate,
                                "batch_size": o.batch_size, "temperature": o.temperature, "alpha": o.alpha, "dtype": compute_dtype(o.dtype),
                                "num_params": model_facts(tmp).num_params}},
            metrics=metrics,
            parents=[str(teacher_dir)],
        ))
    return Path(o.out)


def _prompts(data: str) -> list[list[dict]]:

    try:
        if data.endswith(".jsonl"):
            return [row["prompt"] for row in file_rows(DatasetSpec(path=data, type="alpaca"))]
        return [[{"role": "user", "content": s.prompt}] for t in task_names(data) for s in demo_samples(t, "train")]
    except (DataError, ValueError) as e:
        raise OptimizeError(str(e)) from None


def _copy_student(student_dir: Path, teacher_dir: Path, out: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(student_dir).get_vocab() != AutoTokenizer.from_pretrained(teacher_dir).get_vocab():
        raise OptimizeError(f"{student_dir} has another tokenizer than the teacher; a draft model must share it")
    for path in student_dir.iterdir():
        if path.is_file() and path.name != "tuneserve.json":
            shutil.copy2(path, out / path.name)


def _teacher_answers(teacher_dir: Path, prompts: list[list[dict]], held_out: list) -> tuple[list[tuple[list[int], int]], dict | None]:
    """(token ids of prompt + the teacher's greedy answer, prompt length) per prompt, via vLLM, and
    the teacher's held-out scores from the same engine."""
    import asyncio

    from transformers import AutoTokenizer


    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    prompt_token_ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    answers, scores = asyncio.run(greedy_answers(teacher_dir, prompt_token_ids, max_tokens=96, samples=held_out))
    return [(ids + answer, len(ids)) for ids, answer in zip(prompt_token_ids, answers, strict=True)], scores


def _train(student_dir: Path, teacher_dir: Path, examples, steps: int, lr: float, batch_size: int, temperature: float, alpha: float,
           dtype: str) -> dict:
    import random

    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=getattr(torch, compute_dtype())).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    # float32 weights and optimizer state, the student's forward autocast to bf16 (as the finetune
    # recipes train): 30 steps of 8 took 40 s instead of 93 s here (AVX512-BF16)
    mixed_precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute_dtype(dtype) == "bfloat16")
    rng, losses = random.Random(0), []
    for _ in tqdm(range(steps), desc="distilling"):
        ids, labels, attention = _batch(rng.sample(examples, min(batch_size, len(examples))))
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits
        with mixed_precision:
            student_logits = student(input_ids=ids, attention_mask=attention).logits
        loss = distill_loss(student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:], temperature, alpha)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    student.to(torch.bfloat16).save_pretrained(student_dir)
    return {"distill_loss_first": round(sum(losses[:10]) / min(10, len(losses)), 4),
            "distill_loss_last": round(sum(losses[-10:]) / min(10, len(losses)), 4)}


def _batch(examples):
    """Right-padded ids, labels (-100 on prompt and padding) and attention mask."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full((len(examples), width), -100)
    attention = torch.zeros(len(examples), width, dtype=torch.long)
    for row, (tokens, prompt_len) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, prompt_len : len(tokens)] = torch.tensor(tokens[prompt_len:])
        attention[row, : len(tokens)] = 1
    return ids, labels, attention
