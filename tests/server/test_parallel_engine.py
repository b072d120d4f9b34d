"""vLLM's parallelism through `tuneserve serve` on this 2-core CPU: each rank gets its own core,
and greedy float32 answers equal the single-process ones.

SmolLM2-135M has 9 attention heads, which 2 ranks cannot share: tensor parallelism is checked on
a small random model with 4 heads built here (its answers are noise, but they must be the same
noise), pipeline parallelism on the default model. The TP=2 refusal on SmolLM2 is a unit test in
test_startup_checks.py.
"""

import os

import openai
import pytest

from tests.conftest import start_server
from tuneserve.models import resolve_model
from tuneserve.server.process import stop_server

pytestmark = [pytest.mark.engine, pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")]
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]


def greedy_completions(server, model: str) -> list[list[str]]:
    """Tokens, not text: random weights make text that need not round-trip."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    outputs = []
    for prompt in PROMPTS:
        response = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, logprobs=1)
        outputs.append(response.choices[0].logprobs.tokens)
    return outputs


def answers(tmp_path, model: str, *flags: str) -> tuple[list, str]:
    server = start_server(tmp_path, "--model", model, "--dtype", "float32", *flags)
    try:
        return greedy_completions(server, model), server.log_path.read_text()
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def four_head_model(tmp_path_factory):
    """A 2-layer Llama with 4 attention heads and 2 KV heads, random weights, SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("four-heads")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.slow  # four engine starts, ~80 s: `make test-slow`; the start-up checks are in `make test`
def test_tensor_parallel_2_answers_like_one_process(tmp_path, four_head_model):
    single, _ = answers(tmp_path, four_head_model)
    sharded, log = answers(tmp_path, four_head_model, "--tensor-parallel-size", "2")
    assert sharded == single
    assert "local_rank=1" in log  # two workers, each bound to its own core


@pytest.mark.slow
def test_pipeline_parallel_2_answers_like_one_process(tmp_path):
    model = "smollm2-135m-instruct"
    single, _ = answers(tmp_path, model)
    staged, log = answers(tmp_path, model, "--pipeline-parallel-size", "2")
    assert staged == single
    assert "local_rank=1" in log
