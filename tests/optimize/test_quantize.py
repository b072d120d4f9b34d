"""GPTQ W4A16 and SmoothQuant+GPTQ W8A8 of the default model: served by `tuneserve serve`."""

import json
import platform
import re

import openai
import pytest
import torch
from pydantic import ValidationError

from tests.conftest import start_server
from tuneserve.artifacts import read_manifest
from tuneserve.optimize import OptimizeError, run_quantize
from tuneserve.optimize.options import QuantizeOptions
from tuneserve.optimize.quantize import group_size_for
from tuneserve.server.process import stop_server

# vLLM's CPU kernel for W4A16 is built for AVX-512 only (engine/checks.py): on an AVX2 CPU the
# default suite quantizes and serves W8A8 instead. Both schemes share every step but the recipe;
# the other one (W8A8 costs ~3 minutes more) runs in `make test-slow`.
HAS_WNA16_KERNEL = platform.machine().lower() not in ("x86_64", "amd64") or torch.cpu._is_avx512_supported()
SCHEMES = [pytest.param("w4a16", marks=[] if HAS_WNA16_KERNEL else [pytest.mark.slow]),
           pytest.param("w8a8", marks=[pytest.mark.slow] if HAS_WNA16_KERNEL else [])]


@pytest.fixture(scope="module", params=SCHEMES)
def quantized(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "model"
    return request.param, run_quantize(QuantizeOptions(out=str(out), scheme=request.param, samples=64, eval_samples=10))


def test_quantized_model_reports_size_and_quality(quantized):
    scheme, out = quantized
    manifest = read_manifest(out)
    assert manifest.kind == "quantized-model"
    metrics = manifest.metrics
    assert metrics["size_ratio"] < (0.5 if scheme == "w4a16" else 0.75)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    if scheme == "w4a16" and not HAS_WNA16_KERNEL:  # quantized for another machine: said, not scored
        assert metrics["eval_after"] is None and "AVX-512 only" in metrics["eval_after_skipped"]
        return
    print(scheme, {k: v for k, v in metrics.items() if not k.startswith("eval")},
          "ppl", metrics["eval_before"]["perplexity"], "->", metrics["eval_after"]["perplexity"])
    assert metrics["eval_after"]["perplexity"] < metrics["eval_before"]["perplexity"] * 1.5


# Sixteen questions with one checkable word each, asked bare and "in one sentence": 32 answers.
FACTS = [("What is the capital of France?", ["Paris"]), ("What is the capital of Japan?", ["Tokyo"]),
         ("What is the capital of Italy?", ["Rome"]), ("What is the capital of Germany?", ["Berlin"]),
         ("What is the capital of Spain?", ["Madrid"]), ("What is the capital of the United Kingdom?", ["London"]),
         ("How many days are in a week?", ["seven", "7"]), ("What color is the sky on a clear day?", ["blue"]),
         ("What is the opposite of hot?", ["cold"]), ("What is 2 + 2?", ["4", "four"]),
         ("Which animal says moo?", ["cow"]), ("What is the largest planet in our solar system?", ["Jupiter"]),
         ("What do bees make?", ["honey"]), ("What is frozen water called?", ["ice"]),
         ("How many legs does a spider have?", ["eight", "8"]), ("Which planet is known as the Red Planet?", ["Mars"])]
QUESTIONS = [(q + suffix, answers) for q, answers in FACTS for suffix in ("", " Answer in one sentence.")]
# One answer of a 135M model is a coin flip on some machines (the bare Paris question is a near-tie
# even in bf16: "The" -1.74 vs "L" -1.99); 32 answers are not. Measured 2026-11-26 on the default
# model through `tuneserve serve` (64 calibration samples): bf16 24 of 32, W8A8 23, W4A16 14.
# Each threshold leaves 5 answers of room for near-ties that go the other way on another machine;
# a broken quantization (garbage text) gets about none.
MIN_RIGHT = {"w8a8": 18, "w4a16": 9}


def num_right(client, model: str) -> int:
    """All 32 questions at once: one batch (a W8A8 stream is slow on an AVX2 CPU)."""
    from concurrent.futures import ThreadPoolExecutor

    def is_right(question: str, answers: list[str]) -> bool:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=30
        )
        text = reply.choices[0].message.content
        return any(re.search(rf"\b{re.escape(a)}\b", text, re.IGNORECASE) for a in answers)

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        return sum(pool.map(lambda qa: is_right(*qa), QUESTIONS))


def test_quantized_model_serves_and_knows_simple_facts(quantized, tmp_path):
    scheme, out = quantized
    if scheme == "w4a16" and not HAS_WNA16_KERNEL:
        pytest.skip("no W4A16 kernel in vLLM's AVX2 build: test_weight_only_quantization_on_avx2_is_refused_in_one_line")
    server = start_server(tmp_path, "--model", str(out))  # the later --model wins over the suite's default
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        right = num_right(client, str(out))
    finally:
        stop_server(server)
    print(f"{scheme}: {right} of {len(QUESTIONS)} simple facts right")
    assert right >= MIN_RIGHT[scheme]


def test_group_size_divides_the_layers():
    from tuneserve.models import model_facts, resolve_model

    assert group_size_for(model_facts(resolve_model(None))) == 64  # 576 % 128 != 0


def test_bad_inputs_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="samples"):
        QuantizeOptions(out=str(tmp_path / "a"), samples=4)
    (tmp_path / "data.jsonl").write_text('{"text": "only one line"}\n')
    with pytest.raises(OptimizeError, match="too few calibration samples: .* has 1"):
        run_quantize(QuantizeOptions(out=str(tmp_path / "a"), calibration=str(tmp_path / "data.jsonl"), samples=16))
    with pytest.raises(OptimizeError, match="unknown demo task"):
        run_quantize(QuantizeOptions(out=str(tmp_path / "a"), calibration="poetry"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="set overwrite to replace it"):
        run_quantize(QuantizeOptions(out=str(tmp_path / "exists")))
    monkeypatch.setenv("TUNESERVE_QUANTIZE_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(OptimizeError, match="make quantize-env"):
        run_quantize(QuantizeOptions(out=str(tmp_path / "a"), samples=16))
    assert not (tmp_path / "a").exists()


W4A16_CONFIG = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0": {
    "targets": ["Linear"], "input_activations": None, "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64}}}}
W8A8_CONFIG = {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"group_0": {
    "targets": ["Linear"], "input_activations": {"num_bits": 8, "dynamic": True}, "weights": {"num_bits": 8, "type": "int"}}}}


@pytest.mark.skipif(HAS_WNA16_KERNEL, reason="this CPU has vLLM's W4A16 kernel (AVX-512)")
def test_weight_only_quantization_on_avx2_is_refused_in_one_line(tmp_path):
    """vLLM would pick its AVX-512-only W4A16 kernel here and its worker would die at the first
    request (seen in CI); `tuneserve serve` says why before the engine starts, naming the way out."""
    import subprocess
    import sys

    from tests.conftest import free_port
    from tuneserve.engine.checks import check_kernels
    from tuneserve.models import resolve_model

    base = json.loads((resolve_model(None) / "config.json").read_text())
    for name, quant in (("w4a16", W4A16_CONFIG), ("w8a8", W8A8_CONFIG)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(base | {"quantization_config": quant}))
    check_kernels(tmp_path / "w8a8")  # int8 W8A8 runs on AVX2 (oneDNN)
    result = subprocess.run([sys.executable, "-m", "tuneserve", "serve", "--port", str(free_port()), "--model", str(tmp_path / "w4a16")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: w4a16: weight-only quantized (W4A16/GPTQ/AWQ), and vLLM's CPU kernel for that is built for AVX-512 only; "
        "this CPU has AVX2. Serve it on an AVX-512 CPU or a GPU, or quantize with --scheme w8a8")
