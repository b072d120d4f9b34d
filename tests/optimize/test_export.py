"""GGUF export: the merged dates adapter written as GGUF (gguf package), loaded back by transformers'
GGUF loader, answers like the source; the Ollama Modelfile carries ChatML and its stop tokens."""

import subprocess
import sys

from tests.helpers import ADAPTERS
from tuneserve.artifacts import read_manifest
from tuneserve.optimize import run_merge


def test_merged_adapter_exports_to_gguf_and_round_trips(tmp_path):
    import gguf

    merged = run_merge(str(ADAPTERS["dates"]), str(tmp_path / "merged"))
    out = tmp_path / "dates-gguf"
    result = subprocess.run([sys.executable, "-m", "tuneserve", "optimize", "export", "--model", str(merged), "--out", str(out), "--type", "f16"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(out)
    trip = manifest.metrics["round_trip"]
    print("GGUF f16 round trip:", trip)
    assert manifest.kind == "gguf"
    assert trip["greedy_agreement"] == 1.0 and trip["token_agreement"] == 1.0  # the dates prompt among them
    assert trip["max_abs_logit_diff"] < 0.05  # bf16 weights are exact in f16
    assert trip["same_tokenization"] and trip["same_chat_template"]

    reader = gguf.GGUFReader(out / "model.gguf")
    fields = {name: reader.fields[name] for name in ("general.architecture", "tokenizer.ggml.model", "tokenizer.chat_template")}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.splitlines()[1] == "FROM ./model.gguf"
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_export_errors_name_the_problem(tmp_path):
    for args, expected in [
        (["--type", "q2_k"], "--type must be f16, bf16, q8_0 or f32"),
        (["--format", "onnx"], "--format must be gguf"),
        (["--model", str(tmp_path / "missing")], "missing"),
    ]:
        result = subprocess.run([sys.executable, "-m", "tuneserve", "optimize", "export", "--out", str(tmp_path / "o"), *args],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr[-500:])
