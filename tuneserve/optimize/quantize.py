"""GPTQ W4A16 and SmoothQuant+GPTQ W8A8 with llm-compressor -> compressed-tensors that vLLM loads.

Also reports what it cost and saved: size on disk, perplexity and demo-task accuracy before and
after (both scored by vLLM on the same held-out samples).
"""

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tuneserve.artifacts import Manifest, atomic_artifact, refuse_existing, write_manifest
from tuneserve.data import DataError, DatasetSpec, demo_samples, file_rows, spread, task_names
from tuneserve.engine import compute_dtype
from tuneserve.errors import StartupError
from tuneserve.evals import evaluate, load_eval_samples
from tuneserve.models import model_facts, resolve_model
from tuneserve.models.identity import base_identity
from tuneserve.optimize.errors import OptimizeError
from tuneserve.optimize.options import Calibrated, QuantizeOptions

logger = logging.getLogger("tuneserve.optimize")

GROUP_SIZES = (128, 64, 32)
MIN_CALIBRATION_SAMPLES = 16
QUANTIZE_PYTHON_ENV = "TUNESERVE_QUANTIZE_PYTHON"


def group_size_for(facts) -> int:
    """The largest usual group size dividing every linear layer's input size (SmolLM2: 576 -> 64)."""
    in_features = [facts.hidden_size, facts.intermediate_size or facts.hidden_size, facts.num_heads * facts.head_dim]
    for size in GROUP_SIZES:
        if all(n % size == 0 for n in in_features):
            return size
    raise OptimizeError(
        f"no group size in {GROUP_SIZES} divides the layer input sizes {sorted(set(in_features))}; "
        "GPTQ W4A16 needs one (try --scheme w8a8, which quantizes per channel)"
    )


def quantize_python() -> Path:
    """The interpreter of the environment that has llm-compressor (see `make quantize-env`)."""
    configured = os.environ.get(QUANTIZE_PYTHON_ENV)
    if configured:
        return Path(configured)
    try:  # an image built with llm-compressor beside vLLM needs no second environment
        import importlib.util

        if importlib.util.find_spec("llmcompressor") is not None:
            return Path(sys.executable)
    except ValueError:
        pass
    return Path(sys.prefix).parent / ".venv-quantize" / "bin" / "python"


def calibration_texts(model_dir: Path, calibration: str, num_samples: int) -> list[str]:
    """Chat-formatted prompt + answer texts from a demo task (or `all`) or a JSONL file."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if Path(calibration).suffix == ".jsonl":
        try:
            rows = file_rows(DatasetSpec(path=calibration, type=_guess_type(calibration)))
        except DataError as e:
            raise OptimizeError(str(e)) from None
        chats = [row["prompt"] + row["completion"] if "completion" in row else row for row in rows]
    else:
        try:
            names = task_names(calibration)
        except ValueError as e:
            raise OptimizeError(str(e)) from None
        samples = [s for name in names for s in demo_samples(name, "train")]
        chats = [[{"role": "user", "content": s.prompt}, {"role": "assistant", "content": s.answer}] for s in samples]
    texts = [c["text"] if isinstance(c, dict) else tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    if len(texts) < max(num_samples, MIN_CALIBRATION_SAMPLES):
        raise OptimizeError(
            f"too few calibration samples: {calibration} has {len(texts)}, "
            f"samples asks for {num_samples} (at least {MIN_CALIBRATION_SAMPLES})"
        )
    return spread(texts, num_samples)  # every task, not the first one only


def _guess_type(path: str) -> str:
    with open(path) as f:
        first = json.loads(next((line for line in f if line.strip()), "{}"))
    return "messages" if "messages" in first else "alpaca" if "instruction" in first else "text"


def run_quantize(options: QuantizeOptions) -> Path:
    """`tuneserve optimize quantize`: quantize, evaluate before/after, write the artifact."""
    o = options
    model_dir, group_size, texts, python = prepare_compression(o, o.scheme)
    with atomic_artifact(o.out, overwrite=o.overwrite) as tmp:
        run_worker(python, model_dir, tmp, o.scheme, texts, group_size)
        metrics = _quality_and_size(model_dir, tmp, o.eval_samples)
        tool = "llm-compressor GPTQ" + (" + SmoothQuant" if o.scheme == "w8a8" else "")
        write_manifest(tmp, Manifest(
            kind="quantized-model",
            base_model=base_identity(o.model or model_dir.name, model_dir),
            recipe={"quantize": {"scheme": o.scheme, "group_size": group_size, "calibration": o.calibration, "samples": len(texts), "tool": tool}},
            metrics=metrics,
            parents=[str(model_dir)],
        ))
    return Path(o.out)


def prepare_compression(options: Calibrated, scheme: str | None):
    """What quantize and prune check before the worker starts: the model, output, calibration texts
    and the llm-compressor environment. Returns (model_dir, W4A16 group size, texts, python)."""
    refuse_existing(options.out, options.overwrite)
    model_dir = resolve_model(options.model)
    group_size = group_size_for(model_facts(model_dir)) if scheme == "w4a16" else None
    texts = calibration_texts(model_dir, options.calibration, options.samples)
    python = quantize_python()
    if not python.exists():
        raise OptimizeError(f"no llm-compressor environment at {python}: run `make quantize-env` (or set {QUANTIZE_PYTHON_ENV})")
    return model_dir, group_size, texts, python


def run_worker(python: Path, model_dir: Path, out: Path, scheme: str, texts: list[str], group_size: int | None,
               *extra: str) -> None:
    """Run llm-compressor on `texts` in its environment; its progress bars pass through to our stderr."""
    import codecs
    from collections import deque

    with tempfile.TemporaryDirectory() as work:
        calibration = Path(work) / "calibration.jsonl"
        calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        cmd = [str(python), "-m", "tuneserve.optimize.quantize_worker", "--model", str(model_dir), "--out", str(out),
               "--scheme", scheme, "--calibration", str(calibration), "--samples", str(len(texts)),
               "--dtype", compute_dtype(), *extra]  # float32 where bf16 is emulated: W8A8 calibration 84 s, not 255 s
        if group_size:
            cmd += ["--group-size", str(group_size)]
        process = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        decoder, tail = codecs.getincrementaldecoder("utf-8")(errors="replace"), deque(maxlen=300)
        for chunk in iter(lambda: process.stderr.read1(4096), b""):
            text = decoder.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            tail.append(text)
    if process.wait() != 0:
        raise OptimizeError(f"llm-compressor failed (exit {process.returncode}):\n{''.join(tail)[-3000:]}")


def _quality_and_size(model_dir: Path, quantized_dir: Path, eval_samples: int) -> dict:
    sizes = {name: sum(p.stat().st_size for p in d.glob("*.safetensors")) for name, d in (("before", model_dir), ("after", quantized_dir))}
    metrics: dict = {"weights_bytes_before": sizes["before"], "weights_bytes_after": sizes["after"],
                     "size_ratio": round(sizes["after"] / sizes["before"], 3)}
    if eval_samples:
        samples = load_eval_samples("all", num_samples=eval_samples)
        metrics["eval_before"] = evaluate(model_dir, samples)
        try:
            metrics["eval_after"] = evaluate(quantized_dir, samples)
        except StartupError as e:  # quantized here for another machine: no kernel for it on this one
            logger.warning("not scored after quantization: %s", e)
            metrics["eval_after"] = None
            metrics["eval_after_skipped"] = str(e)
    return metrics
