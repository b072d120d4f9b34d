"""A stand-in engine for faults the real one cannot be made to produce on demand."""

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace


@dataclass
class FakeEngine:
    """Generates "tok0 tok1 ..." (`token_delay_s` apart); `fault` picks a failure: None, "dead",
    "mid_stream", "bug", "add_lora" (the engine refuses every adapter), "engine_abort" / "engine_error"
    (the engine ends the request itself), "second_prompt_fails" (request ids ending in -1 fail after
    their first token), "second_prompt_refused" (they fail before it, as a request the engine refuses
    when admitting it), "adapter_fails" (requests with an adapter fail before their first token).

    Like vLLM's AsyncLLM it aborts a request whose output stream is closed or cancelled early;
    `events` logs ("abort", id) and anything a test appends, in order."""

    fault: str | None = None
    num_tokens: int = 4
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0  # the prefill: how long a request waits for its first token
    num_yielded: dict[str, int] = field(default_factory=dict)  # tokens each request id produced
    aborted: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    loras: set[int] = field(default_factory=set)
    pinned: set[int] = field(default_factory=set)

    @property
    def errored(self) -> bool:
        return self.fault == "dead"

    async def generate(self, prompt, sampling_params, request_id, *, lora_request=None):
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.fault == "dead":
            raise EngineDeadError()
        if self.fault == "bug":
            raise RuntimeError("secret internal detail")
        try:
            for i in range(self.num_tokens):
                is_refused = (self.fault == "second_prompt_refused" and request_id.endswith("-1")) or (
                    self.fault == "adapter_fails" and lora_request is not None)
                if is_refused and i == 0:
                    await asyncio.sleep(0.05)  # its siblings have started by now
                    raise ValueError("the engine refused this request")
                if self.fault == "mid_stream" and i == 2:
                    raise RuntimeError("worker crashed")
                if self.fault == "second_prompt_fails" and request_id.endswith("-1") and i == 1:
                    raise RuntimeError("worker crashed")
                await asyncio.sleep(self.first_token_delay_s if i == 0 and self.first_token_delay_s else self.token_delay_s)
                self.num_yielded[request_id] = i + 1
                last = i == self.num_tokens - 1
                reason = None
                if self.fault in ("engine_abort", "engine_error") and i == 1:
                    reason, last = self.fault.removeprefix("engine_"), True
                elif last:
                    reason = "length"
                logprobs = None if sampling_params.logprobs is None else [{i: SimpleNamespace(logprob=-0.5, rank=1, decoded_token=f"tok{i} ")}]
                output = SimpleNamespace(index=0, text=f"tok{i} ", token_ids=[i], logprobs=logprobs, finish_reason=reason)
                yield SimpleNamespace(outputs=[output], finished=last, prompt_token_ids=prompt["prompt_token_ids"], prompt_logprobs=None, num_cached_tokens=0)
                if last:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)
            raise

    async def abort(self, request_id):
        self.aborted.append(request_id)
        self.events.append(("abort", request_id))

    async def check_health(self):
        if self.fault == "dead":
            raise RuntimeError("engine dead")

    async def add_lora(self, lora_request):
        if self.fault == "add_lora":
            raise RuntimeError("Call to add_lora method failed: Worker failed")
        self.loras.add(lora_request.lora_int_id)
        return True

    async def remove_lora(self, lora_id):
        self.loras.discard(lora_id)
        self.pinned.discard(lora_id)
        return True

    async def list_loras(self):
        return set(self.loras)

    async def pin_lora(self, lora_id):
        self.pinned.add(lora_id)
        return True

    def get_num_unfinished_requests(self):
        return 0

    def shutdown(self):
        pass
