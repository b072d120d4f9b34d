"""A killed run resumes from its newest complete checkpoint, skipping the steps it finished and
continuing the same loss curve; a fresh run never picks up stale checkpoints."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tuneserve.artifacts import read_manifest

NUM_STEPS = 8


def write_recipe(tmp_path, name: str, seed: int = 42):
    out = tmp_path / name
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(
        "datasets:\n  - path: demo:dates\nlora_r: 8\nlora_target_modules: [q_proj, v_proj]\n"
        f"max_steps: {NUM_STEPS}\nsave_steps: 2\nlogging_steps: 1\nmicro_batch_size: 2\nsequence_len: 128\n"
        f"val_set_size: 0\neval_samples: 0\nseed: {seed}\noutput_dir: {out}\n"
    )
    return recipe, out


def finetune(recipe, *flags) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tuneserve", "finetune", "sft", str(recipe), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})


def kill_after_checkpoint(recipe, work, step: int) -> None:
    cmd = [sys.executable, "-m", "tuneserve", "finetune", "sft", str(recipe)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while not (work / f"checkpoint-{step}" / "trainer_state.json").exists():
        assert first.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, f"no checkpoint-{step} after 300 s"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # pull the plug mid-run
    first.wait()


def test_killed_run_resumes_where_it_stopped_on_the_same_loss_curve(tmp_path):
    reference_recipe, reference_out = write_recipe(tmp_path, "reference")
    assert finetune(reference_recipe).returncode == 0
    reference = dict(map(tuple, read_manifest(reference_out).metrics["loss_history"]))

    recipe, out = write_recipe(tmp_path, "adapter")
    work = tmp_path / ".adapter.checkpoints"
    kill_after_checkpoint(recipe, work, step=4)
    assert not out.exists()  # nothing half-written under the final name
    # a checkpoint the kill interrupted while it was being written (no trainer_state.json yet)
    (work / "checkpoint-7").mkdir(exist_ok=True)
    (work / "checkpoint-7" / "adapter_model.safetensors").write_bytes(b"partial")

    resumed = finetune(recipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = read_manifest(out).metrics
    start = metrics["resumed_from_step"]
    assert start in (4, 6)  # the newest complete checkpoint, not the partial checkpoint-7
    assert metrics["global_step"] == NUM_STEPS
    assert metrics["num_steps_this_process"] == NUM_STEPS - start  # the finished steps were skipped
    resumed_losses = dict(map(tuple, metrics["loss_history"]))
    for step in range(start + 1, NUM_STEPS + 1):  # same data order, same weights: the same losses
        assert resumed_losses[step] == pytest.approx(reference[step], rel=0.02), step


def test_fresh_run_ignores_stale_checkpoints_and_resume_refuses_another_recipe(tmp_path):
    recipe, out = write_recipe(tmp_path, "adapter")
    work = tmp_path / ".adapter.checkpoints"
    # what an interrupted run of another recipe leaves: a complete checkpoint and its run record
    (work / "checkpoint-2").mkdir(parents=True)
    (work / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (work / "run.json").write_text('{"recipe_sha256": "0000"}')
    refused = finetune(recipe, "--resume")
    assert refused.returncode == 2
    assert "belong to another run" in refused.stderr

    fresh = finetune(recipe)  # no --resume: starts over, whatever lies in the checkpoint directory
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    metrics = read_manifest(out).metrics
    assert metrics["resumed_from_step"] is None
    assert metrics["num_steps_this_process"] == NUM_STEPS
    assert not work.exists()
