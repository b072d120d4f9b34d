"""A GGUF from `tuneserve optimize export`, run by llama.cpp itself, against the source model.

    cd examples/export && npm ci     # node-llama-cpp: llama.cpp's prebuilt CPU binaries
    .venv/bin/python examples/export/llama_cpp_parity.py runs/dates-gguf runs/dates-merged

Greedy answers (32 tokens at most) to the merge parity prompts from llama.cpp and from
transformers on the source checkpoint; prints both and how many are the same.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def transformers_answers(model_dir: str, prompts: list[str]) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            tokens = model.generate(**ids, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(tokens[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def main(gguf_dir: str, source: str) -> None:
    from tuneserve.optimize.merge import PARITY_PROMPTS

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(PARITY_PROMPTS, f)
    result = subprocess.run(["node", str(HERE / "llama_cpp_answers.mjs"), str(Path(gguf_dir).resolve() / "model.gguf"), f.name],
                            capture_output=True, text=True, cwd=HERE, check=True)
    llama_cpp = json.loads(result.stdout.strip().splitlines()[-1])["answers"]
    reference = transformers_answers(source, PARITY_PROMPTS)
    same = 0
    for prompt, a, b in zip(PARITY_PROMPTS, llama_cpp, reference, strict=True):
        same += a.strip() == b.strip()
        print(f"- {prompt[:60]}\n    llama.cpp:    {a.strip()!r}\n    transformers: {b.strip()!r}")
    print(f"same greedy answer: {same}/{len(PARITY_PROMPTS)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
