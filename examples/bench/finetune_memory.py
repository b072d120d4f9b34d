"""Peak memory and seconds per step of QLoRA vs LoRA (bf16) vs full finetuning, one run.

Each mode trains the default model for the same steps on the same data in its own process, so
each peak RSS is that mode's alone. Prints a markdown table.

A driver rather than a bench matrix: it measures training, not a server.
Run: .venv/bin/python examples/bench/finetune_memory.py   (about 6 minutes on 2 cores)
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from tuneserve.artifacts import read_manifest

NUM_STEPS = 12
RECIPE = """
adapter: {adapter}
datasets:
  - path: demo:all
val_set_size: 0
sequence_len: 256
max_steps: {steps}
micro_batch_size: 8
learning_rate: 1.0e-4
eval_samples: 0
save_steps: 1000
output_dir: {out}
"""


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for adapter in ("qlora", "lora", "full"):
            recipe = Path(tmp) / f"{adapter}.yaml"
            out = Path(tmp) / adapter
            recipe.write_text(RECIPE.format(adapter=adapter, steps=NUM_STEPS, out=out))
            subprocess.run([sys.executable, "-m", "tuneserve", "finetune", "sft", str(recipe)], check=True, capture_output=True)
            rows[adapter] = read_manifest(out).metrics
            m = rows[adapter]
            m["training_mib"] = m["train_peak_rss_mib"] - m["rss_before_train_mib"]
            print(adapter, {k: m[k] for k in ("peak_rss_mib", "train_peak_rss_mib", "training_mib", "seconds_per_step")}, flush=True)
    lora = rows["lora"]
    print(f"\n| mode | peak RSS while training (MiB) | added by training (MiB) | process peak (MiB) | s/step (batch 8, {NUM_STEPS} steps) | vs LoRA (peak while training / time) |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['train_peak_rss_mib']} | {m['training_mib']} | {m['peak_rss_mib']} | {m['seconds_per_step']:.2f} | "
              f"{m['train_peak_rss_mib'] / lora['train_peak_rss_mib']:.2f}x / {m['seconds_per_step'] / lora['seconds_per_step']:.2f}x |")


if __name__ == "__main__":
    main()
