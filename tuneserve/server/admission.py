"""Who may start a request and when: API keys, the in-flight cap, and draining on SIGTERM."""

import asyncio
import time

from fastapi import Request

from tuneserve.server import metrics
from tuneserve.server.auth import Scope, Tenant
from tuneserve.server.errors import ServiceUnavailableError


class Admission:
    def __init__(self, max_in_flight: int | None = None):
        self.max_in_flight = max_in_flight
        self.num_in_flight = 0
        self.is_draining = False

    def admit(self) -> None:
        if self.is_draining:
            raise ServiceUnavailableError("The server is shutting down; retry on another instance.", retry_after_s=10)
        if self.max_in_flight is not None and self.num_in_flight >= self.max_in_flight:
            raise ServiceUnavailableError(
                f"The server is at its limit of {self.max_in_flight} requests in flight; retry shortly.", retry_after_s=2
            )
        self.num_in_flight += 1
        metrics.QUEUE_DEPTH.set(self.num_in_flight)

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
    """The caller's tenant (None when the server has no keys); 401/403 otherwise."""
    auth = raw.app.state.auth
    if auth is None:
        return None
    tenant = auth.authenticate(raw.headers.get("authorization"))
    tenant.require_scope(scope)
    return tenant
