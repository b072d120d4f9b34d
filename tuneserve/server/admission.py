"""Who may start a request and when: API keys, the in-flight cap, and draining on SIGTERM."""

import asyncio
import time

from fastapi import Request

from tuneserve.server import metrics
from tuneserve.server.auth import Scope, Tenant
from tuneserve.server.errors import ServiceUnavailableError


class Admission:
    """Requests in flight (what a drain waits for) and the engine requests they run: a request
    with prompts x n choices runs that many, and `max_engine_requests` counts them all."""

    def __init__(self, max_engine_requests: int | None = None):
        self.max_engine_requests = max_engine_requests
        self.num_in_flight = 0
        self.num_engine_requests = 0
        self.is_draining = False

    def admit(self) -> None:
        if self.is_draining:
            raise ServiceUnavailableError("The server is shutting down; retry on another instance.", retry_after_s=10)
        self._check(1)
        self.num_in_flight += 1
        metrics.QUEUE_DEPTH.set(self.num_in_flight)

    def claim(self, num_requests: int) -> None:
        """Engine requests about to start (503 past the server's limit)."""
        self._check(num_requests)
        self.num_engine_requests += num_requests

    def unclaim(self, num_requests: int) -> None:
        self.num_engine_requests -= num_requests

    def _check(self, num_requests: int) -> None:
        limit = self.max_engine_requests
        if limit is not None and self.num_engine_requests + num_requests > limit:
            raise ServiceUnavailableError(
                f"The server is at its limit of {limit} engine requests in flight; retry shortly.", retry_after_s=2
            )

    def release(self) -> None:
        self.num_in_flight -= 1
        metrics.QUEUE_DEPTH.set(self.num_in_flight)

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting; wait for in-flight requests. True if all finished in time."""
        self.is_draining = True
        deadline = time.monotonic() + timeout_s
        while self.num_in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self.num_in_flight == 0


def authorize(raw: Request, scope: Scope) -> Tenant | None:
    """The caller's tenant (None when the server has no keys); 401/403 otherwise. The key was
    already checked, before the body was read, by middleware.Authenticate."""
    if raw.app.state.auth is None:
        return None
    tenant = getattr(raw.state, "tenant", None) or raw.app.state.auth.authenticate(raw.headers.get("authorization"))
    tenant.require_scope(scope)
    return tenant
