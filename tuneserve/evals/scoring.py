"""Held-out evaluation: exact match, perplexity, preference accuracy.

Greedy answers come from vLLM (exact match); log-probabilities of the reference completion (and
of the rejected one, for preference pairs) give perplexity and preference accuracy. Base model
and adapter are scored by the same code."""

import asyncio
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneserve.artifacts import read_manifest, write_manifest
from tuneserve.data import DataError, DatasetSpec, demo_samples, file_rows, task_names, user
from tuneserve.data.general import mentions
from tuneserve.engine import chat_prompt_ids, start_eval_engine, tokens_prompt
from tuneserve.models import ModelError, resolve_model
from tuneserve.models.identity import read_adapter_config

MAX_NEW_TOKENS = 64


@dataclass
class EvalSample:
    task: str
    prompt: list[dict]
    answer: str
    rejected: str | None = None
    match: str = "exact"  # exact (JSON on content), or word / word_cased: the answer appears as whole words


@dataclass
class SampleScore:
    task: str
    is_exact: bool
    answer_logprob: float
    num_answer_tokens: int
    rejected_logprob: float | None
    output: str = ""


def load_eval_samples(task: str | None = None, data: str | None = None, data_type: str | None = None, num_samples: int = 50) -> list[EvalSample]:
    """Demo held-out samples (first `num_samples` per task), or every record of a JSONL file."""
    if data is not None:
        rows = file_rows(DatasetSpec(path=data, type=data_type or "alpaca"))
        return [_from_row(row, Path(data).stem) for row in rows]
    try:
        names = task_names(task or "all")
    except ValueError as e:
        raise DataError(str(e)) from None
    return [
        EvalSample(s.task, user(s.prompt), s.answer, s.wrong)
        for name in names
        for s in demo_samples(name, "held_out")[:num_samples]
    ]


def _from_row(row: dict, task: str) -> EvalSample:
    if "chosen" in row:
        return EvalSample(task, row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"])
    if "completion" in row:
        return EvalSample(task, row["prompt"], row["completion"][0]["content"])
    raise DataError("text datasets have no reference answers to evaluate against")


def is_exact_match(output: str, answer: str) -> bool:
    output, answer = output.strip(), answer.strip()
    if output == answer:
        return True
    try:  # JSON answers match on content, not spacing
        return json.loads(output) == json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        return False


def is_correct(output: str, sample: EvalSample) -> bool:

    if sample.match == "exact":
        return is_exact_match(output, sample.answer)
    return mentions(output, sample.answer, case_sensitive=sample.match == "word_cased")


def summarize(scores: list[SampleScore]) -> dict:
    def stats(group: list[SampleScore]) -> dict:
        num_tokens = sum(s.num_answer_tokens for s in group)
        out = {
            "num_samples": len(group),
            "exact_match": sum(s.is_exact for s in group) / len(group),
            "perplexity": math.exp(-sum(s.answer_logprob for s in group) / num_tokens),
        }
        pairs = [s for s in group if s.rejected_logprob is not None]
        if pairs:
            out["preference_accuracy"] = sum(s.answer_logprob > s.rejected_logprob for s in pairs) / len(pairs)
        return out

    tasks = sorted({s.task for s in scores})
    return {**stats(scores), "tasks": {t: stats([s for s in scores if s.task == t]) for t in tasks}}


def run_eval(
    model: str | None = None,
    adapter: str | None = None,
    task: str | None = None,
    data: str | None = None,
    data_type: str | None = None,
    num_samples: int = 50,
) -> dict:
    """`tuneserve finetune eval`: score a model (plus adapter) on a demo task or a JSONL file.

    With an adapter that has a manifest, the results are stored in it under metrics.evals.
    """

    samples = load_eval_samples(task, data, data_type, num_samples)
    adapter_dir = _adapter(adapter)
    results = evaluate(resolve_model(model), samples, adapter_dir)
    manifest = read_manifest(adapter_dir) if adapter_dir else None
    if manifest is not None:
        manifest.metrics.setdefault("evals", {})[data or f"demo:{task or 'all'}"] = results
        write_manifest(adapter_dir, manifest)
    return results


def _adapter(adapter: str | None) -> Path | None:
    if adapter is None:
        return None

    path = Path(adapter).expanduser()
    try:
        read_adapter_config(path)
    except ModelError as e:
        raise DataError(str(e)) from None
    return path


def evaluate(model_dir: Path, samples: list[EvalSample], adapter_dir: Path | None = None, score_outputs=None) -> dict:
    """Score `samples` on the model, or on the model with an adapter served through vLLM's LoRA
    path as `tuneserve serve` serves it; with `score_outputs(samples, greedy_outputs) -> dict`, its
    scores of the greedy answers too."""
    import gc

    if not samples:
        raise DataError("nothing to evaluate: no samples")
    scores = asyncio.run(_score_all(model_dir, samples, adapter_dir))
    gc.collect()
    extra = score_outputs(samples, [s.output for s in scores]) if score_outputs else {}
    return summarize(scores) | extra


async def greedy_answers(
    model_dir: Path, prompts: list[list[int]], max_tokens: int, samples: list[EvalSample] | None = None
) -> tuple[list[list[int]], dict | None]:
    """The model's greedy continuation (token ids, end-of-turn included) of each prompt, and with
    `samples` their scores (as `evaluate` gives them) from the same engine, started once."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams


    engine = start_eval_engine(model_dir)

    async def one(ids: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        async for out in engine.generate(tokens_prompt(ids), params, uuid.uuid4().hex):
            last = out
        return list(last.outputs[0].token_ids)

    try:
        answers = list(await asyncio.gather(*(one(ids) for ids in prompts)))
        if not samples:
            return answers, None
        scorer = _Scorer(engine, AutoTokenizer.from_pretrained(model_dir))
        return answers, summarize(list(await asyncio.gather(*(scorer.score(s) for s in samples))))
    finally:
        engine.shutdown()
        scorer = engine = None  # AsyncLLM.__del__ fails noisily if it runs at interpreter exit


async def _score_all(model_dir: Path, samples: list[EvalSample], adapter_dir: Path | None = None) -> list[SampleScore]:
    from transformers import AutoTokenizer

    lora = None
    if adapter_dir is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("evaluated", 1, str(adapter_dir))
    engine = start_eval_engine(model_dir, read_adapter_config(adapter_dir).get("r") if adapter_dir else None)
    try:
        scorer = _Scorer(engine, AutoTokenizer.from_pretrained(model_dir), lora)
        return list(await asyncio.gather(*(scorer.score(s) for s in samples)))
    finally:
        engine.shutdown()
        scorer = engine = None  # AsyncLLM.__del__ fails noisily if it runs at interpreter exit


class _Scorer:
    """One engine, two kinds of request: greedy answers, and prompt logprobs of completions."""

    def __init__(self, engine: Any, tokenizer: Any, lora_request: Any = None):
        self.engine, self.tokenizer, self.lora_request = engine, tokenizer, lora_request

    async def score(self, sample: EvalSample) -> SampleScore:
        prompt_ids = self._template(sample.prompt, add_generation_prompt=True)
        output = await self._generate(prompt_ids)
        answer_logprob, num_tokens = await self._completion_logprob(sample.prompt, prompt_ids, sample.answer)
        rejected = None
        if sample.rejected is not None:
            rejected, _ = await self._completion_logprob(sample.prompt, prompt_ids, sample.rejected)
        return SampleScore(sample.task, is_correct(output, sample), answer_logprob, num_tokens, rejected, output)

    async def logprob(self, sample: EvalSample) -> tuple[float, int]:
        """Only the log-probability of the sample's answer (no generation)."""
        prompt_ids = self._template(sample.prompt, add_generation_prompt=True)
        return await self._completion_logprob(sample.prompt, prompt_ids, sample.answer)

    def _template(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:

        return chat_prompt_ids(self.tokenizer, messages, add_generation_prompt)

    async def _run(self, prompt_ids: list[int], params: Any) -> Any:

        async for out in self.engine.generate(tokens_prompt(prompt_ids), params, uuid.uuid4().hex, lora_request=self.lora_request):
            last = out
        return last

    async def _generate(self, prompt_ids: list[int]) -> str:
        from vllm import SamplingParams

        out = await self._run(prompt_ids, SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0))
        return out.outputs[0].text

    async def _completion_logprob(self, prompt: list[dict], prompt_ids: list[int], completion: str) -> tuple[float, int]:
        """Sum of log p(completion tokens | prompt), the end-of-turn token included."""
        from vllm import SamplingParams

        full_ids = self._template([*prompt, {"role": "assistant", "content": completion}])
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise DataError("the chat template does not extend the prompt; cannot score completions")
        out = await self._run(full_ids, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
        positions = range(len(prompt_ids), len(full_ids))
        return sum(out.prompt_logprobs[i][full_ids[i]].logprob for i in positions), len(positions)
