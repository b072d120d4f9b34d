"""An interrupted run resumes from its last checkpoint and the step count continues."""

import os
import signal
import subprocess
import sys
import time

from tuneserve.artifacts import read_manifest


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    out = tmp_path / "adapter"
    recipe.write_text(
        "datasets:\n  - path: demo:dates\nlora_r: 8\nlora_target_modules: [q_proj, v_proj]\n"
        f"max_steps: 8\nsave_steps: 2\nmicro_batch_size: 2\nsequence_len: 128\nval_set_size: 0\n"
        f"eval_samples: 0\noutput_dir: {out}\n"
    )
    cmd = [sys.executable, "-m", "tuneserve", "finetune", "sft", str(recipe)]
    work = tmp_path / ".adapter.checkpoints"
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while not (work / "checkpoint-4" / "trainer_state.json").exists():
        assert first.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, "no checkpoint-4 after 300 s"
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint finish writing, then pull the plug
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not out.exists()

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = read_manifest(out).metrics
    assert metrics["resumed_from_step"] >= 4
    assert metrics["global_step"] == 8
