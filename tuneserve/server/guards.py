"""Guards against prompt hacking, per tenant (keys file) or for every request (no keys).

- Input guard: a sequence-classification LoRA (`tuneserve finetune classify`, `--guard-model`)
  scores the text a client supplied (user and tool turns, prompts, Responses input). At or above
  the tenant's threshold the request is blocked (400, code `prompt_injection_detected`) or flagged
  (header `x-tuneserve-guard`). System prompts are the operator's and are not scored.
- Output guard: a response that contains one of the tenant's canary strings, or a run of 32
  characters of the request's own system prompt / instructions, is blocked (400 `output_blocked`;
  in a stream, an error event replaces the chunk that would complete the leak and the stream
  ends) or flagged (header, non-streaming responses only: a stream's headers are already sent).

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
import threading
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneserve.server import metrics
from tuneserve.server.errors import ClientError

logger = logging.getLogger("tuneserve.server")
HEADER = "x-tuneserve-guard"
LEAK_WINDOW = 32  # characters of the system prompt that count as leaking it


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


class OutputBlockedError(ClientError):
    code = "output_blocked"


class Guards:
    """The server's input classifier (optional) and the rules for each tenant."""

    def __init__(self, classifier: Any | None):
        self.classifier = classifier
        self._lock = threading.Lock()  # one forward pass at a time: the engine has the cores

    def spec_for(self, tenant: Any | None) -> GuardSpec:
        """The tenant's `guards`; without keys (or with the one --api-key), every request gets the
        input guard's defaults."""
        if tenant is None or (tenant.spec.guards is None and tenant.name == "api-key"):
            return GuardSpec(input=InputGuardSpec() if self.classifier is not None else None)
        return tenant.spec.guards or GuardSpec()

    async def check_input(self, body: Any, tenant: Any | None) -> dict[str, str]:
        """Raise InputBlockedError, or return the headers to add (a flag), or {}."""
        spec = self.spec_for(tenant).input
        texts = request_texts(body)
        if spec is None or not spec.enabled or self.classifier is None or not texts:
            return {}
        score = await asyncio.to_thread(self._attack_probability, texts)
        if score < spec.threshold:
            return {}
        who = tenant.name if tenant is not None else "-"
        metrics.GUARD_EVENTS.labels("input", spec.action, who).inc()
        logger.warning("input guard: %s a request from %s (attack probability %.2f)", spec.action + "ed", who, score)
        if spec.action == "block":
            raise InputBlockedError(
                f"The request was blocked by this server's prompt-injection guard (attack probability {score:.2f} "
                f">= threshold {spec.threshold})."
            )
        return {HEADER: f"input; score={score:.2f}"}

    def _attack_probability(self, texts: list[str]) -> float:
        with self._lock:
            positive = self.classifier.labels[-1]
            return max(p[positive] for p in self.classifier.probabilities(texts))

    def output_checker(self, body: Any, tenant: Any | None) -> "OutputChecker | None":
        spec = self.spec_for(tenant).output
        if spec is None or not (spec.canaries or spec.system_prompt):
            return None
        secrets = list(spec.canaries)
        if spec.system_prompt:
            secrets += [s for s in system_texts(body) if s.strip()]
        return OutputChecker(spec, secrets, tenant.name if tenant is not None else "-") if secrets else None


class OutputChecker:
    """Whether text leaks a canary or a system prompt; the stream wrapper holds back nothing but
    the chunk that would complete a leak."""

    def __init__(self, spec: OutputGuardSpec, secrets: list[str], who: str):
        self.spec, self.who = spec, who
        self.needles = [n for s in secrets for n in _needles(s)]

    def leak(self, text: str) -> bool:
        folded = " ".join(text.split()).lower()
        return any(n in folded for n in self.needles)

    def check_response(self, response: BaseModel) -> dict[str, str]:
        if not self.leak("\n".join(_strings(response.model_dump(mode="json")))):
            return {}
        return self._act()

    async def wrap(self, chunks: AsyncIterator[BaseModel]) -> AsyncIterator[BaseModel]:
        seen = ""
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                seen += "".join(_strings(chunk.model_dump(mode="json"), keys=("content", "text", "delta")))
                if self.spec.action == "block" and self.leak(seen):
                    self._act()  # raises: sse_stream sends the error event, closing aborts the engine request
                yield chunk
        if self.spec.action == "flag" and self.leak(seen):
            metrics.GUARD_EVENTS.labels("output", "flag", self.who).inc()

    def _act(self) -> dict[str, str]:
        metrics.GUARD_EVENTS.labels("output", self.spec.action, self.who).inc()
        logger.warning("output guard: %s a response to %s (it leaked a protected string)", self.spec.action + "ed", self.who)
        if self.spec.action == "block":
            raise OutputBlockedError("The response was blocked by this server's output guard: it contained protected text.")
        return {HEADER: "output; leak"}


def _needles(secret: str) -> list[str]:
    """Whitespace- and case-folded pieces of `secret` whose presence counts as leaking it."""
    folded = " ".join(secret.split()).lower()
    if len(folded) <= LEAK_WINDOW:
        return [folded]
    return [folded[i:i + LEAK_WINDOW] for i in range(0, len(folded) - LEAK_WINDOW + 1, 8)]


def _strings(value: Any, keys: tuple[str, ...] = ("content", "text")) -> list[str]:
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


def request_texts(body: Any) -> list[str]:
    """What the client wrote: user and tool turns, prompts, Responses input (not system prompts)."""
    from tuneserve.server.chat_protocol import ChatCompletionRequest
    from tuneserve.server.completion_protocol import CompletionRequest
    from tuneserve.server.responses_protocol import ResponsesRequest

    if isinstance(body, ChatCompletionRequest):
        return [t for m in body.messages if m.role in ("user", "tool", "function") for t in _message_text(m.content)]
    if isinstance(body, CompletionRequest):
        prompt = body.prompt
        return [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
    if isinstance(body, ResponsesRequest):
        if isinstance(body.input, str):
            return [body.input]
        return [t for item in body.input if item.get("role", "user") in ("user", "tool")
                for t in _message_text(item.get("content")) + _strings(item, ("output",))]
    return []


def system_texts(body: Any) -> list[str]:
    """The operator's instructions in a request: system/developer turns, Responses instructions."""
    from tuneserve.server.chat_protocol import ChatCompletionRequest
    from tuneserve.server.responses_protocol import ResponsesRequest

    if isinstance(body, ChatCompletionRequest):
        return [t for m in body.messages if m.role in ("system", "developer") for t in _message_text(m.content)]
    if isinstance(body, ResponsesRequest):
        texts = [body.instructions] if getattr(body, "instructions", None) else []
        if isinstance(body.input, list):
            texts += [t for item in body.input if item.get("role") in ("system", "developer") for t in _message_text(item.get("content"))]
        return texts
    return []


def load_guards(guard_model: str | None, tenants: list[Any]) -> Guards | None:
    """The server's guards, or None when neither --guard-model nor any tenant's `guards` asks for one."""
    from tuneserve.server.startup import StartupError

    specs = {t.name: t.guards for t in tenants if t.guards is not None}
    wants_classifier = [name for name, s in specs.items() if s.input is not None and s.input.enabled]
    if wants_classifier and guard_model is None:
        raise StartupError(f"tenant {wants_classifier[0]!r} enables the input guard: pass --guard-model (a `tuneserve finetune classify` adapter)")
    if guard_model is None and not specs:
        return None
    classifier = None
    if guard_model is not None:
        from tuneserve.models import ModelError
        from tuneserve.models.classifier import Classifier

        try:
            classifier = Classifier.load(guard_model)
        except (ModelError, OSError, ValueError) as e:
            raise StartupError(f"--guard-model {guard_model}: {e}") from None
    return Guards(classifier)
