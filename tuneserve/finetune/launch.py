"""Training on several processes: the same recipe under `accelerate launch` (DDP, FSDP, DeepSpeed).

The launching process does what happens once (checks, fresh start or resume check, the held-out
evaluation before and after, which starts a vLLM engine that must not inherit the workers'
torch.distributed environment). The workers (`python -m tuneserve.finetune.worker`) build the
trainer, train (transformers' Trainer shards the data and syncs the gradients) and rank 0 writes
the artifact. Checkpoints hold every rank's RNG state, so `--resume` continues across processes.
"""

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneserve.config import ConfigError
from tuneserve.errors import UserError
from tuneserve.finetune.recipe import Recipe

logger = logging.getLogger("tuneserve.finetune")

LAUNCH_FILE = "launch.json"  # in the checkpoint directory: what the workers run


class LaunchError(UserError, RuntimeError):
    """The workers failed; the message carries the end of their log."""


@dataclass(frozen=True)
class Launch:
    """How many processes, and an optional Accelerate config file (FSDP, DeepSpeed, several nodes)."""

    num_processes: int = 1
    config_file: Path | None = None

    def __post_init__(self):
        if self.num_processes < 1:
            raise ConfigError(f"--num-processes must be at least 1, got {self.num_processes}")
        if self.config_file is not None and not Path(self.config_file).is_file():
            raise ConfigError(f"--config-file {self.config_file}: no such file")

    @property
    def is_distributed(self) -> bool:
        return self.num_processes > 1 or self.config_file is not None

    def command(self, launch_file: Path) -> list[str]:
        """`accelerate launch` of the worker module; without a config file, plain DDP (torchrun)."""
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if self.config_file is not None:
            cmd += ["--config_file", str(self.config_file)]
        else:  # "multi_gpu" is Accelerate's name for DDP; on a machine without GPUs it runs gloo on CPU
            cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(free_port())]  # not torchrun's fixed 29500: two runs may share a machine
        if self.config_file is None or self.num_processes > 1:  # else the config file's own count
            cmd += ["--num_processes", str(self.num_processes)]
        return cmd + ["-m", "tuneserve.finetune.worker", str(launch_file)]


def run_workers(launch: Launch, recipe: Recipe, resume: bool, overwrite: bool) -> Path:
    """Train on `launch.num_processes` processes; returns the artifact rank 0 wrote."""
    launch_file = recipe.work_dir() / LAUNCH_FILE
    launch_file.write_text(json.dumps({
        "recipe": recipe.model_dump(mode="json"), "resume": resume, "overwrite": overwrite,
    }) + "\n")
    log_path = recipe.work_dir() / "workers.log"
    cmd = launch.command(launch_file)
    warn_if_not_sharded(launch)
    logger.info("launching %d training processes: %s (log: %s)", launch.num_processes, " ".join(cmd), log_path)
    # The workers' progress goes to the terminal as it happens, and to a log for the error message.
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
        for line in process.stdout:
            sys.stderr.buffer.write(line)
            log.write(line)
        process.wait()
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise LaunchError(f"the training processes failed (exit {process.returncode}); last lines:\n{tail}")
    return Path(recipe.output_dir)


def warn_if_not_sharded(launch: Launch) -> None:
    """Accelerate runs FSDP and DeepSpeed configs as plain DDP on a machine without GPUs (checked
    on accelerate 1.15: MULTI_CPU, a DistributedDataParallel model): say so rather than let the
    run look sharded."""
    import torch
    import yaml

    if launch.config_file is None or torch.cuda.is_available():
        return
    kind = (yaml.safe_load(Path(launch.config_file).read_text()) or {}).get("distributed_type")
    if kind in ("FSDP", "DEEPSPEED"):
        logger.warning("%s: without a GPU Accelerate runs %s as plain DDP on CPU; nothing is sharded", launch.config_file, kind)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process, as torchrun and Accelerate set them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
