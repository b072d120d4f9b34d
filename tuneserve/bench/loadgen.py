"""The load generator: streamed chat requests at a rate or under a concurrency cap, raw timings out.

Timing follows vLLM `bench serve`'s chat client: a request starts when it is sent; every SSE
chunk with a choice is a token chunk (its arrival gives TTFT, then ITL gaps); the request ends
at its last token chunk; the final usage chunk gives the output and cached-token counts.
"""

import asyncio
import json
import math
import random
import time

import httpx

from tuneserve.bench.metrics import RequestResult
from tuneserve.bench.workloads import BenchRequest


def arrival_gaps_s(num_requests: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps before each request: gamma-distributed with mean 1/rate (Poisson when burstiness=1)."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    theta = 1.0 / (request_rate * burstiness)
    return [rng.gammavariate(burstiness, theta) for _ in range(num_requests)]


def _payload(request: BenchRequest, temperature: float, seed: int) -> dict:
    return {
        "model": request.model, "messages": request.messages, "max_tokens": request.max_tokens,
        "temperature": temperature, "seed": seed, "ignore_eos": request.ignore_eos,
        "stream": True, "stream_options": {"include_usage": True},
    }


def _read_event(line: str, result: RequestResult, started: float, state: dict) -> None:
    if not line.startswith("data:"):
        return
    data = line.removeprefix("data:").strip()
    if data == "[DONE]":
        return
    now = time.perf_counter()
    chunk = json.loads(data)
    if "error" in chunk:
        raise RuntimeError(f"error event: {chunk['error'].get('message')}")
    if chunk.get("choices"):
        if state["last"] is None:
            result.ttft_s = now - started
        else:
            result.itl_s.append(now - state["last"])
        state["last"] = now
    elif usage := chunk.get("usage"):
        result.output_tokens = usage.get("completion_tokens") or 0
        result.prompt_len = usage.get("prompt_tokens") or 0
        result.cached_tokens = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0


async def send(client: httpx.AsyncClient, request: BenchRequest, temperature: float, seed: int, t0: float) -> RequestResult:
    """One streamed chat completion, timed; failures are recorded, never raised."""
    result = RequestResult(model=request.model)
    started = time.perf_counter()
    result.start_s = started - t0
    state = {"last": None}
    try:
        headers = {"X-Session-ID": request.session} if request.session else None
        async with client.stream("POST", "/v1/chat/completions", json=_payload(request, temperature, seed), headers=headers) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {body[:300]}"
                return result
            async for line in response.aiter_lines():
                _read_event(line, result, started, state)
        if state["last"] is None:
            result.error = "no token chunk received"
            return result
        result.latency_s = state["last"] - started
        result.success = True
    except (httpx.HTTPError, RuntimeError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


async def run_load(
    client: httpx.AsyncClient, requests: list[BenchRequest], request_rate: float, burstiness: float,
    max_concurrency: int | None, temperature: float, seed: int, on_done=None,
) -> tuple[list[RequestResult], float]:
    """Send `requests` at `request_rate` (at most `max_concurrency` in flight); return results and duration."""
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    t0 = time.perf_counter()

    async def one(i: int, request: BenchRequest) -> RequestResult:
        queued = time.perf_counter()
        if slots is None:
            result = await send(client, request, temperature, seed + i, t0)
        else:
            async with slots:
                waited = time.perf_counter() - queued
                result = await send(client, request, temperature, seed + i, t0)
                result.queue_s = waited
        if on_done:
            on_done(result)
        return result

    tasks = []
    for i, (gap, request) in enumerate(zip(arrival_gaps_s(len(requests), request_rate, burstiness, seed), requests, strict=True)):
        if gap:
            await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(one(i, request)))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - t0
