"""The peer tool: vLLM's own `vllm bench serve`, run on the same prompts as `tuneserve bench`.

Used to check that both tools measure the same thing (tests/bench/test_peer.py) and to run
vLLM's server as a bench setting (`engine: vllm`).
"""

import json
import random
import subprocess
import sys
from pathlib import Path

from tuneserve.bench.workloads import WORDS


def write_sharegpt(path: Path, num_prompts: int, input_len: int, seed: int) -> Path:
    """ShareGPT-format prompts of `input_len` words; replies long enough that any output cap applies."""
    rng = random.Random(seed)
    rows = [{"conversations": [
        {"from": "human", "value": " ".join(rng.choice(WORDS) for _ in range(input_len))},
        {"from": "gpt", "value": " ".join(["word"] * 1024)},
    ]} for _ in range(num_prompts)]
    path.write_text(json.dumps(rows))
    return path


def vllm_bench_serve(
    base_url: str, model: str, tokenizer: Path, dataset: Path, num_prompts: int, output_len: int,
    max_concurrency: int, result_file: Path, seed: int = 0,
) -> dict:
    """`vllm bench serve` (chat endpoint, streamed, ignore_eos, temperature 0) -> its result JSON."""
    cmd = [
        sys.executable, "-m", "tuneserve.bench.vllm_cli", "bench", "serve", "--backend", "openai-chat",
        "--endpoint", "/v1/chat/completions", "--base-url", base_url, "--model", model, "--tokenizer", str(tokenizer),
        "--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--sharegpt-output-len", str(output_len),
        "--num-prompts", str(num_prompts), "--max-concurrency", str(max_concurrency), "--ignore-eos",
        "--temperature", "0", "--seed", str(seed), "--save-result", "--result-dir", str(result_file.parent),
        "--result-filename", result_file.name, "--disable-tqdm",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"vllm bench serve failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(result_file.read_text())
