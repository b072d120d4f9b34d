"""A kill in the middle of merging or quantizing leaves nothing under the final name, and the
same command then runs to completion."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ADAPTERS
from tuneserve.artifacts import read_manifest

COMMANDS = {
    "merge": ["optimize", "merge", "--adapter", str(ADAPTERS["dates"])],
    "quantize": ["optimize", "quantize", "--scheme", "w8a8", "--samples", "16", "--eval-samples", "0"],
}


# Both stages write through the same atomic_artifact; the quantize run (llm-compressor) is the slower
# proof of it, so it runs with `make test-slow`.
@pytest.mark.parametrize("stage", ["merge", pytest.param("quantize", marks=pytest.mark.slow)])
def test_kill_mid_stage_leaves_no_partial_artifact(tmp_path, stage):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tuneserve", *COMMANDS[stage], "--out", str(out)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(".out.tmp-") and any(p.iterdir()) for p in tmp_path.iterdir()):
        assert first.poll() is None, f"{stage} ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the stage and its workers, mid-write
    first.wait()
    assert not out.exists()

    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert read_manifest(out) is not None and (out / "config.json").is_file()
