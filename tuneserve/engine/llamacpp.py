"""llama.cpp as the server's second engine (`tuneserve serve --engine llamacpp`).

llama.cpp's own server, embedded in this process by the `xllamacpp` wheel, runs a GGUF file of
the served model; this module makes it an `Engine` (engine/interface.py), so keys, limits, guards,
chat templates, tools, metrics and the request lifecycle are the same code as with vLLM. Prompts
go in as token ids (the API tokenizes with the model's own tokenizer), outputs come back as vLLM
shaped deltas. On a CPU without native bf16 llama.cpp's kernels decode one stream ~3x faster than
vLLM's CPU backend (README, "One user at a time"); vLLM keeps batching, adapters and the rest.

What llama.cpp cannot do as vLLM does is refused by name (`refusals`), never served differently.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneserve.artifacts import read_manifest
from tuneserve.config import tuneserve_home

logger = logging.getLogger("tuneserve.engine")

INSTALL = "pip install xllamacpp (llama.cpp's server, a prebuilt wheel)"
GGUF_NAME = "model.gguf"
DEFAULT_SLOTS = 4  # llama-server's own default number of parallel slots


@dataclass
class Delta:
    """One choice's new tokens, as vLLM's CompletionOutput carries them (output_kind DELTA)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict] | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None


@dataclass
class Output:
    """What vLLM's RequestOutput carries that serving reads."""

    request_id: str
    outputs: list[Delta]
    finished: bool
    prompt_token_ids: list[int]
    num_cached_tokens: int = 0
    prompt_logprobs: None = None


@dataclass
class TopLogprob:
    logprob: float
    rank: int
    decoded_token: str | None = None  # None: serving decodes the id with the model's tokenizer


# -- the GGUF a model is served from --------------------------------------------------------------


def gguf_of(model_ref: str, model_dir: Path, gguf_type: str) -> Path:
    """The GGUF file to serve: a `tuneserve optimize export` directory's own, else the model's,
    written once (~seconds for a small model) into $TUNESERVE_HOME/gguf and reused."""
    given = Path(model_ref).expanduser()
    if given.is_file() and given.suffix == ".gguf":
        return given
    if (given / GGUF_NAME).is_file():
        return given / GGUF_NAME
    from tuneserve.models import model_fingerprint
    from tuneserve.models.gguf_export import write_gguf

    out = tuneserve_home() / "gguf" / f"{model_dir.name}-{model_fingerprint(model_dir)[:12]}-{gguf_type}" / GGUF_NAME
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        logger.info("writing %s (GGUF %s) for llama.cpp, once", out, gguf_type)
        tmp = out.with_name(f".{GGUF_NAME}.{os.getpid()}")
        write_gguf(model_dir, tmp, gguf_type)
        tmp.replace(out)
    return out


def tokenizer_dir_of(model_ref: str) -> Path | None:
    """For a `tuneserve optimize export` directory: the model it was exported from (its tokenizer
    and chat template are the API's); None for anything else."""
    given = Path(model_ref).expanduser()
    if not (given / GGUF_NAME).is_file() or not (given / "tuneserve.json").is_file():
        return None
    base = read_manifest(given).base_model
    path = Path(base.get("path", "")) if isinstance(base, dict) else Path(str(base))
    return path if (path / "config.json").is_file() else None


# -- requests: vLLM SamplingParams -> llama.cpp's OpenAI-style completion body ---------------------


def refusals(params: Any, lora_request: Any) -> list[tuple[str, str]]:
    """(request field, why) for each thing asked that llama.cpp would not do as vLLM does."""
    out = []
    if lora_request is not None:
        out.append(("model", "adapters (LoRA)"))
    checks = [
        ("prompt_logprobs", params.prompt_logprobs is not None, "logprobs of the prompt (prompt_logprobs, or echo with logprobs)"),
        ("min_tokens", bool(params.min_tokens), "min_tokens"),
        ("stop_token_ids", bool(_user_stop_ids(params)), "stop_token_ids"),
        ("bad_words", bool(params.bad_words), "bad_words"),
        ("allowed_token_ids", bool(params.allowed_token_ids), "allowed_token_ids"),
        ("include_stop_str_in_output", params.include_stop_str_in_output, "include_stop_str_in_output"),
        ("skip_special_tokens", not params.skip_special_tokens, "skip_special_tokens: false"),
    ]
    out += [(name, what) for name, asked, what in checks if asked]
    structured = params.structured_outputs
    if structured is not None and structured.json is None and not structured.json_object:
        out.append(("response_format", "structured outputs other than JSON (regex, choice, grammar)"))
    return out


def _user_stop_ids(params: Any) -> list[int]:
    # vLLM adds the model's extra end-of-generation ids itself (`_all_stop_token_ids`); only the client's count
    return list(params.stop_token_ids or [])


def completion_body(prompt_ids: list[int], params: Any, seed_offset: int = 0) -> dict:
    """llama.cpp's /v1/completions body for one choice, every sampler set (llama.cpp's defaults,
    top_k 40 and min_p 0.05 among them, are not vLLM's)."""
    body = {
        "prompt": prompt_ids,
        "max_tokens": params.max_tokens,
        "stream": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k and params.top_k > 0 else 0,
        "min_p": params.min_p,
        "typical_p": 1.0,
        "repeat_penalty": params.repetition_penalty,
        "repeat_last_n": len(prompt_ids) + params.max_tokens,  # vLLM penalizes every prompt and output token
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
        "ignore_eos": params.ignore_eos,
        "stop": list(params.stop or []),
        "logprobs": max(1, params.logprobs or 0),  # at least 1: the chunks then name their token ids
        "cache_prompt": True,
    }
    if params.seed is not None:
        body["seed"] = params.seed + seed_offset
    if params.logit_bias:
        body["logit_bias"] = [[int(k), v] for k, v in params.logit_bias.items()]
    structured = params.structured_outputs
    if structured is not None:
        schema = structured.json if structured.json is not None else {"type": "object"}
        body["json_schema"] = schema if isinstance(schema, dict) else __import__("json").loads(schema)
    return body


def delta_of(chunk: dict, index: int, num_logprobs: int | None) -> tuple[Delta, int | None]:
    """A streamed llama.cpp chunk -> (Delta, cached prompt tokens if it is the last chunk)."""
    choice = chunk["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    token_ids = [c["id"] for c in content]
    logprobs = None
    if num_logprobs is not None:
        logprobs = [_position(c, num_logprobs) for c in content]
    timings = chunk.get("timings")
    finish = choice.get("finish_reason")
    delta = Delta(index=index, text=choice.get("text") or "", token_ids=token_ids, logprobs=logprobs, finish_reason=finish)
    return delta, (timings.get("cache_n", 0) if timings else None)


def _position(entry: dict, k: int) -> dict:
    """One position's logprobs as vLLM has them: {token_id: (logprob, rank)} for the k most likely
    and the sampled token (ranked among those llama.cpp returned)."""
    tops = (entry.get("top_logprobs") or [])[:k]
    position = {t["id"]: TopLogprob(t["logprob"], rank) for rank, t in enumerate(tops, 1)}
    if entry["id"] not in position:
        rank = 1 + sum(t["logprob"] > entry["logprob"] for t in tops)
        position[entry["id"]] = TopLogprob(entry["logprob"], rank)
    return position


def request_error(error: dict) -> Exception:
    """llama.cpp's error JSON: a request it refuses (4xx) is the client's 400, anything else a failure."""
    from vllm.exceptions import VLLMValidationError

    message = str(error.get("message", error))
    if 400 <= int(error.get("code") or 500) < 500:
        return VLLMValidationError(f"llama.cpp refused the request: {message}")
    return RuntimeError(f"llama.cpp failed the request: {message}")


# -- the engine --------------------------------------------------------------------------------------


@dataclass
class LlamaCppEngine:
    """llama.cpp's server in this process, as serving's Engine. Each running request holds one
    thread of `pool` blocked in llama.cpp (which releases the GIL); its chunks cross to the event
    loop through a queue, and a closed stream tells llama.cpp to stop at its next token."""

    server: Any
    gguf: Path
    max_model_len: int
    max_num_seqs: int
    pool: ThreadPoolExecutor
    running: dict[str, threading.Event] = field(default_factory=dict)
    is_shut_down: bool = False

    @property
    def errored(self) -> bool:
        return False  # llama.cpp runs in this process: if it dies, so does the server

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str, *, lora_request: Any = None) -> AsyncIterator[Output]:
        from vllm.exceptions import VLLMValidationError

        problems = refusals(sampling_params, lora_request)
        if prompt.get("cache_salt"):  # llama.cpp's slots reuse any earlier prompt's KV: no salted apart
            problems.append(("cache_salt", "cache_salt (a prefix cache kept apart per salt)"))
        if problems:
            name, why = problems[0]
            raise VLLMValidationError(f"{why}: served by --engine vllm; this server runs llama.cpp (--engine llamacpp)", parameter=name)
        prompt_ids = list(prompt["prompt_token_ids"])
        n = sampling_params.n
        streams = [self._choice(completion_body(prompt_ids, sampling_params, i), f"{request_id}/{i}", i, sampling_params.logprobs, prompt_ids)
                   for i in range(n)]
        if n == 1:
            async for output in streams[0]:
                yield output
            return
        from vllm.utils.async_utils import merge_async_iterators

        merged = merge_async_iterators(*streams)
        left = n
        try:
            async for _, output in merged:
                left -= output.finished
                output.finished = left == 0
                yield output
        finally:
            await merged.aclose()

    async def _choice(self, body: dict, key: str, index: int, num_logprobs: int | None, prompt_ids: list[int]) -> AsyncIterator[Output]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = self.running[key] = threading.Event()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading any more
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_chunk(chunk: dict) -> bool:
            put(chunk)
            return stop.is_set()  # True: llama.cpp cancels the task (at its next token)

        def run() -> None:
            try:
                if not stop.is_set():
                    self.server.handle_completions(body, on_chunk)
            finally:
                self.running.pop(key, None)  # only now is llama.cpp's slot free
                put(None)

        loop.run_in_executor(self.pool, run)
        try:
            while (chunk := await queue.get()) is not None:
                if "error" in chunk:
                    raise request_error(chunk["error"])
                delta, cached = delta_of(chunk, index, num_logprobs)
                finished = delta.finish_reason is not None
                yield Output(key, [delta], finished, prompt_ids, cached or 0)
                if finished:
                    return
        finally:
            stop.set()

    async def abort(self, request_id: str) -> None:
        for key, stop in list(self.running.items()):
            if key.rpartition("/")[0] == request_id:
                stop.set()

    async def check_health(self) -> None:
        if self.is_shut_down:
            raise RuntimeError("the llama.cpp engine is shut down")

    async def add_lora(self, lora_request: Any) -> bool:
        raise RuntimeError("adapters are served by --engine vllm")

    async def remove_lora(self, lora_id: int) -> bool:
        return False

    async def list_loras(self) -> set[int]:
        return set()

    async def pin_lora(self, lora_id: int) -> bool:
        return False

    def get_num_unfinished_requests(self) -> int:
        return len(self.running)

    def shutdown(self) -> None:
        if self.is_shut_down:
            return
        self.is_shut_down = True
        for stop in self.running.values():
            stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)  # running calls end at their next token
        self.server = None  # xllamacpp stops llama.cpp's loop when its Server is freed


def server_params(gguf: Path, max_model_len: int, slots: int, threads: int, verbose: bool = False) -> Any:
    """llama.cpp's server settings: `slots` sequences decoded together (continuous batching), each
    with `max_model_len` tokens of context, on `threads` cores; also what bench's llama.cpp peer runs."""
    try:
        import xllamacpp as xlc
    except ImportError:
        raise RuntimeError(f"llama.cpp's server is missing: {INSTALL}") from None
    params = xlc.CommonParams()
    params.model.path = str(gguf)
    params.n_parallel = slots
    params.n_ctx = max_model_len * slots  # llama.cpp divides the context among its slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.cont_batching = True
    params.verbosity = 3 if verbose else 1  # llama.cpp logs every request at 3, its default
    return params


def start_llamacpp(gguf: Path, max_model_len: int, slots: int | None, threads: int | None, verbose: bool = False) -> LlamaCppEngine:
    """llama.cpp's server on `gguf` in this process (default: llama-server's 4 slots, every core this
    process may use). Requests reach it through handle_completions, not over HTTP."""
    import xllamacpp as xlc

    slots = slots or DEFAULT_SLOTS
    threads = threads or len(os.sched_getaffinity(0))
    params = server_params(gguf, max_model_len, slots, threads, verbose)
    # llama.cpp always opens its own HTTP listener: loopback, a free port, and a key nobody is
    # given, so that nothing reaches the engine around tuneserve's keys and limits
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.api_keys = [secrets.token_urlsafe(32)]
    server = xlc.Server(params)
    logger.info("llama.cpp engine: %s, %d slots of %d tokens, %d threads", gguf, slots, max_model_len, threads)
    return LlamaCppEngine(server, gguf, max_model_len, slots, ThreadPoolExecutor(max(16, 4 * slots), "llamacpp"))
