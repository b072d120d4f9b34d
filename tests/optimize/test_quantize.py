"""GPTQ W4A16 and SmoothQuant+GPTQ W8A8 of the default model: served by `tuneserve serve`."""

import json

import openai
import pytest

from tests.conftest import start_server
from tuneserve.artifacts import read_manifest
from tuneserve.bench.server_process import stop_server
from tuneserve.optimize import OptimizeError, run_quantize
from tuneserve.optimize.quantize import group_size_for


@pytest.fixture(scope="module", params=["w4a16", "w8a8"])
def quantized(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "model"
    return request.param, run_quantize(None, str(out), scheme=request.param, samples=64, eval_samples=10)


def test_quantized_model_reports_size_and_quality(quantized):
    scheme, out = quantized
    manifest = read_manifest(out)
    assert manifest.kind == "quantized-model"
    metrics = manifest.metrics
    print(scheme, {k: v for k, v in metrics.items() if not k.startswith("eval")},
          "ppl", metrics["eval_before"]["perplexity"], "->", metrics["eval_after"]["perplexity"])
    assert metrics["size_ratio"] < (0.5 if scheme == "w4a16" else 0.75)
    assert metrics["eval_after"]["perplexity"] < metrics["eval_before"]["perplexity"] * 1.5
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"


# The bare "What is the capital of France?" is a coin flip for SmolLM2-135M itself: its first
# token is "The" (-1.74) vs "L" (-1.99, heading for "L'Étoile"), 0.25 nats apart in bf16, and a
# W8A8 run in CI took the other branch. Asking for one sentence gives "The" -0.55 vs "Paris"
# -2.17 vs "L" -3.42 (measured 2026-11-25), so a wrong answer here means quantization hurt.
PARIS_QUESTION = "What is the capital of France? Answer in one sentence."


def test_quantized_model_serves_and_answers_paris(quantized, tmp_path):
    _, out = quantized
    server = start_server(tmp_path, "--model", str(out))  # the later --model wins over the suite's default
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=str(out), messages=[{"role": "user", "content": PARIS_QUESTION}], temperature=0, max_tokens=20
        )
        assert "Paris" in reply.choices[0].message.content
    finally:
        stop_server(server)


def test_group_size_divides_the_layers():
    from tuneserve.models import model_facts, resolve_model

    assert group_size_for(model_facts(resolve_model(None))) == 64  # 576 % 128 != 0


def test_bad_inputs_are_refused(tmp_path, monkeypatch):
    with pytest.raises(OptimizeError, match="too few calibration samples"):
        run_quantize(None, str(tmp_path / "a"), samples=4)
    (tmp_path / "data.jsonl").write_text('{"text": "only one line"}\n')
    with pytest.raises(OptimizeError, match="too few calibration samples: .* has 1"):
        run_quantize(None, str(tmp_path / "a"), calibration=str(tmp_path / "data.jsonl"), samples=16)
    with pytest.raises(OptimizeError, match="unknown demo task"):
        run_quantize(None, str(tmp_path / "a"), calibration="poetry")
    (tmp_path / "exists").mkdir()
    with pytest.raises(OptimizeError, match="--overwrite"):
        run_quantize(None, str(tmp_path / "exists"))
    monkeypatch.setenv("TUNESERVE_QUANTIZE_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(OptimizeError, match="make quantize-env"):
        run_quantize(None, str(tmp_path / "a"), samples=16)
    assert not (tmp_path / "a").exists()
