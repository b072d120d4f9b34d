"""The requests of a bench run: synthetic chats, ShareGPT conversations, demo tasks, adapter mixes.

Every prompt starts with a tag unique to (setting, rate, repeat, index), so the prefix cache
cannot serve one run from an earlier one: a later setting is not flattered by the ones before.
The tag is a digest of fixed length: a setting with a longer name must not get longer prompts.
"""

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tuneserve.bench.config import Workload
from tuneserve.bench.errors import BenchError
from tuneserve.data import demo_samples, task_names

# Common English words that are one token each for Llama/SmolLM/GPT-style tokenizers, so that
# `input_len` words is close to `input_len` tokens (the server's usage gives the exact count).
WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government number "
    "night point home water room mother area money story fact month lot right study book eye job word "
    "business issue side kind head house service friend father power hour game line end member law car "
    "city community name president team minute idea kid body information back parent face others level "
    "office door health person art war history party result change morning reason research girl guy "
    "moment air teacher force education"
).split()


@dataclass
class BenchRequest:
    model: str
    messages: list[dict]
    max_tokens: int
    ignore_eos: bool
    session: str | None = None  # X-Session-ID, for a router's affinity


def build_requests(workload: Workload, default_model: str, tag: str, seed: int) -> list[BenchRequest]:
    """`workload.num_prompts` requests; the same seed gives the same lengths and model mix."""
    rng = random.Random(seed)
    tag = hashlib.sha256(tag.encode()).hexdigest()[:12]
    if workload.kind == "multiturn":
        return _multiturn(workload, default_model, tag, rng)
    prompts = _prompts(workload, rng)
    mix = workload.model_weights or {default_model: 1.0}
    names, weights = list(mix), list(mix.values())
    requests = []
    for i, (text, max_tokens, ignore_eos) in enumerate(prompts):
        model = rng.choices(names, weights)[0]
        content = f"[{tag}-{i}] {text}" if workload.unique_prefix else text
        ignore_eos = ignore_eos if workload.ignore_eos is None else workload.ignore_eos
        session = model if workload.session_header == "model" else None
        requests.append(BenchRequest(model, [{"role": "user", "content": content}], max_tokens, ignore_eos, session))
    return requests


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _multiturn(workload: Workload, default_model: str, tag: str, rng: random.Random) -> list[BenchRequest]:
    """Conversations of `turns` turns, sent turn by turn (every conversation's first turn, then
    every second turn, ...). Turn k resends the system prompt and the k-1 earlier exchanges (with
    fixed assistant replies, so a run does not depend on what the model said): a server, or a
    router, that keeps a conversation where its prefix is cached prefills only the new turn."""
    systems = [f"[{tag}-tenant{t}] " * workload.unique_prefix + _words(rng, workload.system_prompt_len)
               for t in range(workload.num_tenants)]
    mix = workload.model_weights or {default_model: 1.0}
    names, weights = list(mix), list(mix.values())
    num_conversations = max(1, workload.num_prompts // workload.turns)
    conversations = []
    for c in range(num_conversations):
        model = rng.choices(names, weights)[0]
        exchanges = [(_words(rng, _vary(workload.input_len, workload.range_ratio, rng)),
                      _words(rng, workload.output_len)) for _ in range(workload.turns)]
        conversations.append((f"{tag}-conv{c}", model, systems[c % len(systems)], exchanges))
    requests = []
    for turn in range(workload.turns):
        for conversation, model, system, exchanges in conversations:
            messages = [{"role": "system", "content": system}]
            for user, assistant in exchanges[:turn]:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            messages.append({"role": "user", "content": exchanges[turn][0]})
            session = {"conversation": conversation, "model": model}.get(workload.session_header)
            ignore_eos = True if workload.ignore_eos is None else workload.ignore_eos
            requests.append(BenchRequest(model, messages, workload.output_len, ignore_eos, session))
    return requests


def _prompts(workload: Workload, rng: random.Random) -> list[tuple[str, int, bool]]:
    if workload.kind == "synthetic":
        return [_synthetic(workload, rng) for _ in range(workload.num_prompts)]
    if workload.kind == "sharegpt":
        return _cycle(sharegpt_prompts(Path(workload.path), workload.output_len), workload.num_prompts, rng)
    return _cycle(demo_prompts(workload.task, workload.output_len), workload.num_prompts, rng)


def _vary(length: int, range_ratio: float, rng: random.Random) -> int:
    low, high = int(length * (1 - range_ratio)), int(length * (1 + range_ratio))
    return max(1, rng.randint(low, high))


def _synthetic(workload: Workload, rng: random.Random) -> tuple[str, int, bool]:
    text = _words(rng, _vary(workload.input_len, workload.range_ratio, rng))
    return text, _vary(workload.output_len, workload.range_ratio, rng), True


def _cycle(prompts: list[tuple[str, int, bool]], count: int, rng: random.Random) -> list[tuple[str, int, bool]]:
    prompts = list(prompts)
    rng.shuffle(prompts)
    return [prompts[i % len(prompts)] for i in range(count)]


def sharegpt_prompts(path: Path, max_output_len: int) -> list[tuple[str, int, bool]]:
    """First human turn as the prompt; the reply's length (words x 4/3, about tokens) as max_tokens."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"workload.path: cannot read ShareGPT JSON {path}: {e}") from None
    prompts = []
    for row in rows if isinstance(rows, list) else []:
        turns = row.get("conversations") if isinstance(row, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        prompt, reply = turns[0].get("value"), turns[1].get("value")
        if isinstance(prompt, str) and isinstance(reply, str) and prompt.strip():
            prompts.append((prompt, max(1, min(max_output_len, len(reply.split()) * 4 // 3)), False))
    if not prompts:
        raise BenchError(f"workload.path: {path} holds no ShareGPT conversations (a list of "
                         '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]})')
    return prompts


def demo_prompts(task: str, max_output_len: int) -> list[tuple[str, int, bool]]:

    return [(s.prompt, max_output_len, False) for t in task_names(task) for s in demo_samples(t, "held_out")]


def prepare_adapter_mix(mix, root: Path) -> Path:
    """`mix.count` distinct adapters under `root` (a000, a001, ...): copies of the sources whose
    lora_B matrices are scaled by 1 + k/1e4, so each is its own file (and snapshot) yet behaves
    like its source. Made once per root; returns it."""
    import shutil

    from safetensors.torch import load_file, save_file

    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(mix.names()):
        target = root / name
        if (target / "adapter_model.safetensors").is_file():
            continue
        source = Path(mix.sources[k % len(mix.sources)])
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        tensors = load_file(tmp / "adapter_model.safetensors")
        save_file({key: t * (1 + k / 1e4) if "lora_B" in key else t for key, t in tensors.items()}, tmp / "adapter_model.safetensors")
        tmp.rename(target)
    return root
