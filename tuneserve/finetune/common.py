"""The parts every recipe shares: validate, split, TRL arguments, fit with resume, save."""

import dataclasses
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneserve.artifacts import Manifest, atomic_artifact, read_manifest, refuse_existing, write_manifest
from tuneserve.config import ConfigError
from tuneserve.data import task_names
from tuneserve.engine import compute_dtype
from tuneserve.evals import evaluate, load_eval_samples
from tuneserve.finetune.data import load_rows
from tuneserve.finetune.launch import process_rank, run_workers
from tuneserve.finetune.recipe import Recipe
from tuneserve.models import resolve_model
from tuneserve.models.identity import base_identity
from tuneserve.models.training import load_for_training, lora_config

logger = logging.getLogger("tuneserve.finetune")


@dataclass
class Run:
    """A validated recipe with its resolved base model and data, ready to train."""

    recipe: Recipe
    model_dir: Path
    rows: list[dict]
    dataset_hashes: dict[str, str]
    dtype: str = "bfloat16"  # the recipe's, with auto resolved for this machine
    started_s: float = field(default_factory=time.monotonic)
    metrics: dict[str, Any] = field(default_factory=dict)


def train_and_save(
    recipe: Recipe, build_trainer, resume: bool, overwrite: bool, kind: str = "adapter", evaluate=None, launch=None
) -> Path:
    """The outline every recipe follows: validate -> score base -> train -> save -> score result.

    `evaluate(run, path_or_none)` scores the base (None) and the result; default: demo tasks.
    `launch` (a `launch.Launch`) trains on several processes under `accelerate launch` instead.
    """
    import shutil

    evaluate = evaluate or demo_eval
    run = prepare(recipe, overwrite, resume)
    before = evaluate(run, None)
    if launch is not None and launch.is_distributed:

        out = run_workers(launch, recipe, resume, overwrite)
        shutil.rmtree(recipe.work_dir(), ignore_errors=True)
    else:
        trainer = build_trainer(run)
        fit(run, trainer, resume)
        out = save(run, trainer, kind=kind, overwrite=overwrite)
    record_eval(run, out, before, evaluate(run, out))
    return out


RUN_FILE = "run.json"  # in the checkpoint directory: the recipe those checkpoints belong to


def prepare(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> Run:
    """Everything that can fail cheaply fails here, before a model loads."""
    refuse_existing(recipe.output_dir, overwrite, what="output_dir ")
    if resume:
        _check_resumable(recipe)
    model_dir = resolve_model(recipe.base_model)
    rows, hashes = load_rows(recipe)
    if not resume:
        _start_fresh(recipe)
    dtype = compute_dtype(recipe.dtype)
    return Run(recipe, model_dir, rows, hashes, dtype, metrics={"dtype": dtype})


def _recipe_fingerprint(recipe: Recipe) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _check_resumable(recipe: Recipe) -> None:
    import json

    work = recipe.work_dir()
    if not _last_checkpoint(work):
        raise ConfigError(f"resume: no complete checkpoint under {work}")
    try:
        recorded = json.loads((work / RUN_FILE).read_text()).get("recipe_sha256")
    except (OSError, ValueError):
        recorded = None
    if recorded != _recipe_fingerprint(recipe):
        raise ConfigError(
            f"resume: the checkpoints under {work} belong to another run (its recipe differs); "
            "run without --resume to start over"
        )


def _start_fresh(recipe: Recipe) -> None:
    """A new run never continues from an interrupted one's checkpoints: they are removed."""
    import json
    import shutil

    work = recipe.work_dir()
    if work.exists():
        logger.warning("removing checkpoints of an earlier, unfinished run in %s (use --resume to continue it)", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / RUN_FILE).write_text(json.dumps({"recipe_sha256": _recipe_fingerprint(recipe)}) + "\n")


def split(run: Run):
    """Shuffled train/validation datasets (validation is None when val_set_size is 0)."""
    from datasets import Dataset

    dataset = Dataset.from_list(run.rows).shuffle(seed=run.recipe.seed)
    num_val = int(len(dataset) * run.recipe.val_set_size)
    if num_val == 0:
        return dataset, None
    parts = dataset.train_test_split(test_size=num_val, seed=run.recipe.seed)
    return parts["train"], parts["test"]


def scaled_learning_rate(recipe: Recipe, world_size: int) -> float:
    """The recipe's learning rate, scaled for `world_size` processes as `lr_scaling` says."""
    factor = {"none": 1.0, "linear": float(world_size), "sqrt": world_size ** 0.5}[recipe.lr_scaling]
    return recipe.learning_rate * factor


def trl_args(run: Run, config_cls: type, has_eval: bool, **extra) -> Any:

    r = run.recipe
    return config_cls(
        output_dir=str(r.work_dir()),
        num_train_epochs=r.num_epochs,
        max_steps=r.max_steps or -1,
        learning_rate=scaled_learning_rate(r, process_rank()[1]),
        lr_scheduler_type=r.lr_scheduler,
        warmup_steps=r.warmup_ratio,  # transformers 5 reads a value below 1 as a ratio
        per_device_train_batch_size=r.micro_batch_size,
        per_device_eval_batch_size=r.micro_batch_size,
        gradient_accumulation_steps=r.gradient_accumulation_steps,
        gradient_checkpointing=r.gradient_checkpointing,
        seed=r.seed,
        logging_steps=r.logging_steps,
        save_strategy="steps",
        save_steps=r.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=r.save_steps,
        report_to=r.report_to or "none",
        bf16=run.dtype == "bfloat16",
        use_cpu=not _has_cuda(),
        disable_tqdm=False,
        # TRL's configs take the sequence length; transformers' TrainingArguments (classify) has no such field
        **({"max_length": r.sequence_len} if "max_length" in {f.name for f in dataclasses.fields(config_cls)} else {}),
        **extra,
    )


def build_trainer(run: Run, trainer_cls, config_cls, head: str = "causal-lm", **config_extra):
    """A TRL trainer over the run's model, data and (for LoRA/QLoRA) PEFT config.

    With a PEFT model and no reference model, TRL's DPO scores the reference by switching the
    adapter off, so no second copy of the model is loaded.
    """
    from transformers import AutoTokenizer


    r = run.recipe
    train, val = split(run)
    peft_task = "SEQ_CLS" if head == "reward" else "CAUSAL_LM"
    return trainer_cls(
        model=load_for_training(run.model_dir, r, head=head, dtype=run.dtype),
        args=trl_args(run, config_cls, val is not None, **config_extra),
        train_dataset=train,
        eval_dataset=val,
        processing_class=AutoTokenizer.from_pretrained(run.model_dir),
        peft_config=lora_config(r, task_type=peft_task) if r.is_peft else None,
    )


def fit(run: Run, trainer: Any, resume: bool) -> None:
    """Train (from the last checkpoint with `resume`) and record steps, loss, time and memory."""
    checkpoint = _last_checkpoint(run.recipe.work_dir()) if resume else None
    resumed_from = int(checkpoint.name.split("-")[-1]) if checkpoint else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    from tuneserve.finetune.memory import PeakMemory, StepCounter

    memory, steps = PeakMemory(), StepCounter()
    trainer.add_callback(memory)
    trainer.add_callback(steps)
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        memory.stop()
    args = trainer.args
    run.metrics |= memory.metrics() | base_weight_bits(trainer.model) | {
        # Every process steps together: one optimizer step sees micro x accumulation x processes samples.
        "world_size": args.world_size,
        "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "learning_rate": args.learning_rate,
        "lr_scaling": run.recipe.lr_scaling,
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "num_steps_this_process": steps.num_steps,
        "loss_history": [[log["step"], log["loss"]] for log in trainer.state.log_history if "loss" in log],
        "train_seconds": round(time.monotonic() - run.started_s, 1),
        "seconds_per_step": round(result.metrics["train_runtime"] / max(1, trainer.state.global_step - (resumed_from or 0)), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    for key in ("reward", "kl"):  # GRPO logs the mean reward of its samples and the KL to the reference
        series = [[log["step"], round(log[key], 5)] for log in trainer.state.log_history if key in log]
        if series:
            run.metrics[f"{key}_history"] = series
    eval_logs = [log for log in trainer.state.log_history if "eval_loss" in log]
    if eval_logs:
        run.metrics["eval_loss"] = eval_logs[-1]["eval_loss"]


def save(run: Run, trainer: Any, kind: str = "adapter", overwrite: bool = False, keep_work_dir: bool = False) -> Path:
    """Write the adapter (or full model) + tokenizer + manifest atomically; drop checkpoints
    (a multi-process run's launcher drops them once every process has exited)."""
    import shutil

    r = run.recipe
    with atomic_artifact(r.output_dir, overwrite=overwrite) as tmp:
        if r.is_peft:  # adapter_config.json + adapter_model.safetensors, as vLLM and PEFT load them
            trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])  # not GRPO's frozen "ref" copy
        else:
            trainer.save_model(str(tmp))
            trainer.processing_class.save_pretrained(str(tmp))
        manifest = Manifest(
            kind="model" if r.adapter == "full" else kind,
            base_model=base_identity(r.base_model, run.model_dir),
            recipe=r.model_dump(mode="json"),
            metrics=run.metrics | {"dataset_sha256": run.dataset_hashes},
            parents=[str(run.model_dir)],
        )
        write_manifest(tmp, manifest)
    if not keep_work_dir:
        shutil.rmtree(r.work_dir(), ignore_errors=True)
    return Path(r.output_dir)


def demo_eval(run: Run, model_or_adapter: Path | None = None, score_outputs=None) -> dict | None:
    """Held-out demo scores of the base (None), an adapter dir, or a full model dir
    (`score_outputs(samples, greedy_outputs)` adds scores of its own)."""

    r = run.recipe
    tasks = sorted({t for spec in r.datasets if spec.is_demo for t in task_names(spec.path.removeprefix("demo:"))})
    if not tasks or r.eval_samples == 0:
        return None
    samples = [s for t in tasks for s in load_eval_samples(t, num_samples=r.eval_samples)]
    if model_or_adapter is not None and not r.is_peft:
        return evaluate(model_or_adapter, samples, score_outputs=score_outputs)
    return evaluate(run.model_dir, samples, adapter_dir=model_or_adapter, score_outputs=score_outputs)


def record_eval(run: Run, out: Path, before: dict | None, after: dict | None) -> None:
    """Put before/after scores into the saved manifest (and print the comparison)."""

    if before is None or after is None:
        return
    manifest = read_manifest(out)
    manifest.metrics |= {"eval_before": before, "eval_after": after}
    write_manifest(out, manifest)
    for key in ("exact_match", "perplexity", "preference_accuracy"):
        if key in after:
            logger.info("held-out %s: base %.3f -> trained %.3f", key, before[key], after[key])


def _last_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint: transformers writes trainer_state.json last, so a directory
    without it is one a kill interrupted."""
    checkpoints = [p for p in work_dir.glob("checkpoint-*")
                   if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def base_weight_bits(model: Any) -> dict:
    """How many of the base's linear layers are stored in 4 bits (bitsandbytes), for the manifest."""
    import torch

    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # bitsandbytes' Linear4bit is a torch Linear; PEFT's wrapper of the same name is not
    num_4bit = sum(1 for m in linear if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes"))
    return {"num_linear_layers": len(linear), "num_4bit_linear_layers": num_4bit}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
