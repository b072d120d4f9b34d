"""A merged adapter served by tuneserve answers token for token as PEFT's own `add_weighted_adapter`
applied with transformers on the same weights (both in float32). A float32 server of its own
(~60 s): `make test-slow`; `make test` serves merges on the session server (test_adapters_at_scale.py)."""

import shutil

import pytest

from tests.conftest import start_server
from tests.helpers import ADAPTERS
from tuneserve.server.process import stop_server

pytestmark = [pytest.mark.engine, pytest.mark.slow]
PROMPTS = ["Rewrite the date 3 March 2001 in ISO format (YYYY-MM-DD). Answer with the date only.",
           "Convert 7.5 km to meters. Answer with the number only.", "What is the capital of France?"]
MERGES = {"merge:dates+units": ("linear", [0.5, 0.5]), "merge:ties:dates*0.7+units*0.3": ("ties", [0.7, 0.3])}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-root")
    for name, path in ADAPTERS.items():
        shutil.copytree(path, root / name)
    server = start_server(tmp_path_factory.mktemp("merge"), "--dtype", "float32", "--adapter-root", str(root))
    try:
        yield server, root
    finally:
        stop_server(server)


def peft_answer_ids(root, method: str, weights: list[float], prompt_ids: list[int], max_tokens: int) -> list[int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneserve.models import resolve_model
    from tuneserve.server.adapter_merge import DENSITY, SEED

    model = AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=torch.float32)
    peft = PeftModel.from_pretrained(model, root / "dates", adapter_name="a0")
    peft.load_adapter(root / "units", adapter_name="a1")
    torch.manual_seed(SEED)
    peft.add_weighted_adapter(["a0", "a1"], weights, "merged", combination_type=method, density=DENSITY if method == "ties" else None)
    peft.set_adapter("merged")
    with torch.no_grad():
        out = peft.generate(torch.tensor([prompt_ids]), max_new_tokens=max_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("merge", list(MERGES))
def test_merged_adapters_match_peft_token_by_token(served, merge, tokenizer):
    import httpx

    server, root = served
    method, weights = MERGES[merge]
    for prompt in PROMPTS:
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
        reply = httpx.post(f"{server.base_url}/v1/completions", timeout=300, json={
            "model": merge, "prompt": prompt_ids, "max_tokens": 16, "temperature": 0, "return_token_ids": True,
            "skip_special_tokens": False}).json()
        served_ids = reply["choices"][0]["token_ids"]
        expected = peft_answer_ids(root, method, weights, prompt_ids, 16)[:len(served_ids)]
        assert served_ids == expected, (merge, prompt, tokenizer.decode(served_ids), tokenizer.decode(expected))
