"""Guards against prompt hacking, per tenant (keys file) or for every request (no keys).

- Input guard: a sequence-classification LoRA (`tuneserve finetune classify`, `--guard-model`)
  scores the text a client supplied (every turn but system/developer, tool-call arguments,
  prompts, token-id prompts decoded, Responses input), every 512-token window of it. At or above
  the tenant's threshold the request is blocked (400, code `prompt_injection_detected`; the tokens
  scored count against the key's tokens_per_minute) or flagged (header `x-tuneserve-guard`).
  System prompts are the operator's and are not scored.
- Output guard: a response that contains one of the tenant's canary strings, or a run of 39
  characters of the request's own system prompt / instructions (server/leaks.py), in any choice
  or tool-call arguments, is blocked (400 `output_blocked`; in a stream, an error event replaces
  the chunk that would complete the leak and the stream ends) or flagged (header, non-streaming
  responses only: a stream's headers are already sent).
- A guarded request reads at most --max-guard-chars characters (400 `guard_input_too_large`).

Keys file:
    keys:
      - name: team-a
        key: sk-...
        guards:
          input: {enabled: true, threshold: 0.5, action: block}     # needs --guard-model
          output: {canaries: ["ZEBRA-7731"], system_prompt: true, action: block}
Guards are opt-in per tenant; a server without a keys file and with --guard-model guards every
request with the input defaults (threshold 0.5, block). Blocks and flags are counted in
`tuneserve_guard_events_total{guard, action, tenant}`.
"""

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneserve.engine import no_openmp_pool
from tuneserve.errors import StartupError
from tuneserve.evals.classifier import Classifier
from tuneserve.models import ModelError
from tuneserve.server import metrics
from tuneserve.server.completion_protocol import CompletionRequest
from tuneserve.server.errors import ClientError
from tuneserve.server.leaks import LeakScanner, Needles
from tuneserve.server.responses_protocol import ResponsesRequest

logger = logging.getLogger("tuneserve.server")
HEADER = "x-tuneserve-guard"


class InputGuardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    threshold: float = Field(0.5, gt=0, lt=1, description="Attack probability at or above which the guard acts.")
    action: Literal["block", "flag"] = "block"


class OutputGuardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    canaries: list[str] = Field(default_factory=list, description="Strings that must never appear in a response.")
    system_prompt: bool = Field(False, description="Block responses repeating the request's system prompt.")
    action: Literal["block", "flag"] = "block"


class GuardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: InputGuardSpec | None = None
    output: OutputGuardSpec | None = None


class InputBlockedError(ClientError):
    code = "prompt_injection_detected"

    def __init__(self, message: str, num_tokens_scored: int = 0):
        super().__init__(message)
        self.num_tokens_scored = num_tokens_scored  # charged to the key's tokens_per_minute


class OutputBlockedError(ClientError):
    code = "output_blocked"


class GuardInputTooLargeError(ClientError):
    code = "guard_input_too_large"


class Guards:
    """The server's input classifier (optional) and the rules for each tenant."""

    def __init__(self, classifier: Any | None):
        self.classifier = classifier
        self.decode: Any = None  # the served model's tokenizer.decode, for token-id prompts (set by serve)
        # Scoring runs on one thread of its own at a lower CPU priority, one request at a time: the
        # engine keeps its cores, and one key's guarded bodies cannot take them from other keys.
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard", initializer=_yield_cpu)

    def spec_for(self, tenant: Any | None) -> GuardSpec:
        """The tenant's `guards`; without keys (or with the one --api-key), every request gets the
        input guard's defaults."""
        if tenant is None or (tenant.spec.guards is None and tenant.name == "api-key"):
            return GuardSpec(input=InputGuardSpec() if self.classifier is not None else None)
        return tenant.spec.guards or GuardSpec()

    async def check_input(self, body: Any, tenant: Any | None, max_chars: int) -> dict[str, str]:
        """Raise InputBlockedError, or return the headers to add (a flag), or {}."""
        spec = self.spec_for(tenant).input
        if spec is None or not spec.enabled or self.classifier is None:
            return {}
        texts = request_texts(body, self.decode)
        if not texts:
            return {}
        check_size(texts, max_chars, "the input guard scores")
        is_cancelled = threading.Event()
        try:
            score, num_tokens = await asyncio.get_running_loop().run_in_executor(
                self._scorer, self._attack_probability, texts, is_cancelled.is_set
            )
        except asyncio.CancelledError:  # deadline or client gone: the scorer stops at its next batch
            is_cancelled.set()
            raise
        if score < spec.threshold:
            return {}
        who = tenant.name if tenant is not None else "-"
        metrics.GUARD_EVENTS.labels("input", spec.action, who).inc()
        logger.warning("input guard: %s a request from %s (attack probability %.2f)", spec.action + "ed", who, score)
        if spec.action == "block":
            raise InputBlockedError(
                f"The request was blocked by this server's prompt-injection guard (attack probability {score:.2f} "
                f">= threshold {spec.threshold}).", num_tokens,
            )
        return {HEADER: f"input; score={score:.2f}"}

    def _attack_probability(self, texts: list[str], is_cancelled) -> tuple[float, int]:
        """The highest attack probability of any window of any text, and the tokens scored."""
        positive = self.classifier.labels[-1]
        rows, num_tokens = self.classifier.window_probabilities(texts, is_cancelled=is_cancelled)
        return max((p[positive] for p in rows), default=0.0), num_tokens

    def output_checker(self, body: Any, tenant: Any | None, max_chars: int) -> "OutputChecker | None":
        spec = self.spec_for(tenant).output
        if spec is None or not (spec.canaries or spec.system_prompt):
            return None
        secrets = list(spec.canaries)
        if spec.system_prompt:
            system = [s for s in system_texts(body) if s.strip()]
            check_size(system, max_chars, "the output guard protects")
            secrets += system
        needles = Needles(secrets)
        return OutputChecker(spec, needles, tenant.name if tenant is not None else "-") if needles else None


GUARD_NICE = 10  # CFS weight 110 against the engine's 1024: ~10% of a contended core


def _yield_cpu() -> None:
    """The scorer thread: one torch thread (the forward pass runs in it) at nice GUARD_NICE."""
    import torch

    torch.set_num_threads(1)
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), GUARD_NICE)


def check_size(texts: list[str], max_chars: int, what: str) -> None:
    size = sum(map(len, texts))
    if size > max_chars:
        raise GuardInputTooLargeError(
            f"this key's requests are guarded, and {what} at most {max_chars:,} characters of text; this request "
            f"has {size:,} (the server's --max-guard-chars)"
        )


TEXT_KEYS = ("content", "text", "arguments")  # message text, completion text, tool and function call arguments


class OutputChecker:
    """Whether output leaks a canary or a system prompt: each output (a choice, an output item, an
    arena answer) is scanned on its own, its tool-call arguments included. The stream wrapper holds
    back nothing but the chunk that would complete a leak."""

    def __init__(self, spec: OutputGuardSpec, needles: Needles, who: str):
        self.spec, self.needles, self.who = spec, needles, who

    def check_response(self, response: BaseModel) -> dict[str, str]:
        for texts in output_texts(response.model_dump(mode="json")).values():
            scanner = LeakScanner(self.needles)
            if any(scanner.feed(t) for t in texts):
                return self._act()
        return {}

    async def wrap(self, chunks: AsyncIterator[BaseModel]) -> AsyncIterator[BaseModel]:
        scanners: dict[tuple, LeakScanner] = {}
        is_leaked = False
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                for key, texts in output_texts(chunk.model_dump(mode="json")).items():
                    scanner = scanners.setdefault(key, LeakScanner(self.needles))
                    is_leaked = any([scanner.feed(t) for t in texts]) or is_leaked
                if is_leaked and self.spec.action == "block":
                    self._act()  # raises: sse_stream sends the error event, closing aborts the engine request
                yield chunk
        if is_leaked:
            metrics.GUARD_EVENTS.labels("output", "flag", self.who).inc()

    def _act(self) -> dict[str, str]:
        metrics.GUARD_EVENTS.labels("output", self.spec.action, self.who).inc()
        logger.warning("output guard: %s a response to %s (it leaked a protected string)", self.spec.action + "ed", self.who)
        if self.spec.action == "block":
            raise OutputBlockedError("The response was blocked by this server's output guard: it contained protected text.")
        return {HEADER: "output; leak"}


def output_texts(payload: dict) -> dict[tuple, list[str]]:
    """Each separate output in a response or a streamed chunk, and its texts in order."""
    if isinstance(payload.get("choices"), list):
        return {("choice", c.get("index", i)): _strings(c, TEXT_KEYS) for i, c in enumerate(payload["choices"])}
    if str(payload.get("type", "")).endswith(".delta"):  # a Responses event
        return {("item", payload.get("output_index", 0)): [str(payload.get("delta", ""))]}
    if isinstance(payload.get("output"), list):  # a Responses object
        return {("item", i): _strings(item, TEXT_KEYS) for i, item in enumerate(payload["output"])}
    if isinstance(payload.get("answers"), dict):  # an arena battle
        return {("answer", k): [v] for k, v in payload["answers"].items() if isinstance(v, str)}
    return {}


def _strings(value: Any, keys: tuple[str, ...]) -> list[str]:
    """Every string under one of `keys`, anywhere in a JSON-like value."""
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k in keys and isinstance(v, str):
                out.append(v)
            else:
                out += _strings(v, keys)
    elif isinstance(value, list):
        for v in value:
            out += _strings(v, keys)
    return out


def _message_text(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [t for part in content for t in _strings(part.model_dump() if isinstance(part, BaseModel) else part, ("text",))]
    return []


OPERATOR_ROLES = ("system", "developer")


def request_texts(body: Any, decode: Any = None) -> list[str]:
    """What the client wrote: every turn but the operator's (system, developer), tool-call
    arguments, prompts (token-id prompts decoded), Responses input."""

    if isinstance(getattr(body, "messages", None), list):  # chat, arena battles
        texts = []
        for m in body.messages:
            if m.role not in OPERATOR_ROLES:
                texts += _message_text(m.content)
                texts += [c.function.arguments for c in m.tool_calls or []] + ([m.function_call.arguments] if m.function_call else [])
        return texts
    if isinstance(body, CompletionRequest):
        return [p if isinstance(p, str) else decode(p) if decode else "" for p in body.prompts()]
    if isinstance(body, ResponsesRequest):
        if isinstance(body.input, str):
            return [body.input]
        return [t for item in body.input if item.get("role") not in OPERATOR_ROLES
                for t in _message_text(item.get("content")) + _strings(item, ("output", "arguments"))]
    return []


def system_texts(body: Any) -> list[str]:
    """The operator's instructions in a request: system/developer turns, Responses instructions."""

    if isinstance(getattr(body, "messages", None), list):
        return [t for m in body.messages if m.role in OPERATOR_ROLES for t in _message_text(m.content)]
    if isinstance(body, ResponsesRequest):
        texts = [body.instructions] if getattr(body, "instructions", None) else []
        if isinstance(body.input, list):
            texts += [t for item in body.input if item.get("role") in OPERATOR_ROLES for t in _message_text(item.get("content"))]
        return texts
    return []


def load_guards(guard_model: str | None, tenants: list[Any]) -> Guards | None:
    """The server's guards, or None when neither --guard-model nor any tenant's `guards` asks for one."""

    specs = {t.name: t.guards for t in tenants if t.guards is not None}
    wants_classifier = [name for name, s in specs.items() if s.input is not None and s.input.enabled]
    if wants_classifier and guard_model is None:
        raise StartupError(f"tenant {wants_classifier[0]!r} enables the input guard: pass --guard-model (a `tuneserve finetune classify` adapter)")
    if guard_model is None and not specs:
        return None
    classifier = None
    if guard_model is not None:

        try:
            with no_openmp_pool():  # the engine core forks after this (plugin change 8)
                classifier = Classifier.load(guard_model)
        except (ModelError, OSError, ValueError) as e:
            raise StartupError(f"--guard-model {guard_model}: {e}") from None
    return Guards(classifier)
