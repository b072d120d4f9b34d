"""API keys and tenants: scopes, allowed models (globs), per-minute request and token limits.

Keys file (YAML):
    keys:
      - name: team-a                  # appears in logs instead of the key
        key: sk-team-a-secret         # or key_sha256: <hex digest of the key>
        scopes: [inference]           # inference and/or admin
        models: ["smollm2-*", "team-a-*"]   # globs over base and adapter names (default: all)
        requests_per_minute: 60       # optional
        tokens_per_minute: 20000      # optional; prompt + completion tokens
        max_parallel_requests: 16     # optional; engine requests (prompts x n) in flight at once
                                      # (default --max-parallel-requests-per-key)
        guards: {...}                 # optional; prompt-injection and leak guards (server/guards.py)
Keys are compared as sha256 digests in constant time and never logged.
"""

import asyncio
import collections
import fnmatch
import hashlib
import hmac
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneserve.server.adapter_merge import parse_merge
from tuneserve.server.errors import BadRequestError, ClientError
from tuneserve.server.guards import GuardSpec

Scope = Literal["inference", "admin"]
WINDOW_S = 60.0


class AuthError(ClientError):
    status = 401
    code = "invalid_api_key"


class ForbiddenError(ClientError):
    status = 403
    code = "permission_denied"


class RateLimitError(ClientError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.headers["Retry-After"] = str(max(1, int(retry_after_s + 0.999)))


class KeySlots:
    """A key's share of the engine's batch: up to `limit` engine requests at once. Requests past it
    wait their turn, in arrival order (at most `limit` of them; 429 past that), within their
    deadline: a key sending more than its share queues behind itself, not in front of other keys."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.num_used = 0
        self.waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    async def acquire(self, num_requests: int) -> None:
        limit = self.limit
        if limit is None:
            self.num_used += num_requests
            return
        if num_requests > limit:
            raise BadRequestError(f"this request needs {num_requests} engine requests (prompts x n); this key may run {limit} at once", param="n")
        if not self.waiting and self.num_used + num_requests <= limit:
            self.num_used += num_requests
            return
        if len(self.waiting) >= limit:
            raise RateLimitError(f"this key has {self.num_used} engine requests running and {len(self.waiting)} requests waiting, "
                                 f"its limit ({limit}); retry when some finish", 1)
        granted = asyncio.get_running_loop().create_future()
        entry = (num_requests, granted)
        self.waiting.append(entry)
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release(num_requests)  # its turn came as it was cancelled: pass it on
            else:
                self.waiting.remove(entry)
                self._wake()
            raise

    def release(self, num_requests: int) -> None:
        self.num_used -= num_requests
        self._wake()

    def _wake(self) -> None:
        while self.waiting and self.num_used + self.waiting[0][0] <= (self.limit or 0):
            num_requests, granted = self.waiting.popleft()
            self.num_used += num_requests
            granted.set_result(None)


class TenantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    key: str | None = Field(None, min_length=8)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(default_factory=lambda: ["inference"], min_length=1)
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_parallel_requests: int | None = Field(
        None, ge=1, description="Engine requests (prompts x n) this key may run at once; more wait their turn."
    )
    guards: GuardSpec | None = None  # see tuneserve/server/guards.py

    @model_validator(mode="after")
    def _one_key(self):
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"tenant {self.name!r}: give exactly one of key or key_sha256")
        return self

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.key_sha256) if self.key_sha256 else _sha256(self.key)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[TenantSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        check_unique_names([t.name for t in self.keys])
        return self


def check_unique_names(names: list[str]) -> None:
    """Stored responses and arena battles belong to a tenant's name: two tenants may not share one."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"keys[{seen[name]}] and keys[{i}] are both named {name!r}; tenant names must be unique")
        seen[name] = i


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class Tenant:
    def __init__(self, spec: TenantSpec):
        self.spec = spec
        self.name = spec.name
        self._requests: collections.deque[float] = collections.deque()
        self._tokens: collections.deque[tuple[float, int]] = collections.deque()
        self._reserved = 0  # held by requests in flight (see reserve_tokens)
        self.slots = KeySlots(spec.max_parallel_requests)  # engine requests in flight, and those waiting

    @property
    def is_admin(self) -> bool:
        return "admin" in self.spec.scopes

    def require_scope(self, scope: Scope) -> None:
        if scope not in self.spec.scopes:
            raise ForbiddenError(f"this API key lacks the {scope!r} scope")

    def may_use(self, name: str) -> bool:
        """`name` matches one of the key's globs; a merge, when every adapter in it does."""
        try:
            recipe = parse_merge(name)
        except ClientError:
            recipe = None
        if recipe is not None:
            return all(self.may_use(part) for part in recipe.names)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.spec.models)

    def require_model(self, name: str) -> None:
        if not self.may_use(name):
            raise ForbiddenError(f"this API key may not use model {name!r}", param="model")

    def admit(self, now: float | None = None) -> None:
        """Count one request against the per-minute limits, or raise 429 with Retry-After.

        Requests refused here (or earlier, 401/403) do not count; an admitted request counts once,
        also when it is then refused for its token reservation or fails validation.
        """
        now = time.monotonic() if now is None else now
        self._expire(now)
        rpm, tpm = self.spec.requests_per_minute, self.spec.tokens_per_minute
        if rpm is not None and len(self._requests) >= rpm:
            raise RateLimitError(f"rate limit reached: {rpm} requests per minute", self._requests[0] + WINDOW_S - now)
        if tpm is not None and self._tokens_in_window() >= tpm:
            raise RateLimitError(f"rate limit reached: {tpm} tokens per minute", self._retry_after(now))
        self._requests.append(now)

    def reserve_tokens(self, num_tokens: int, now: float | None = None) -> int:
        """Hold the most a request can use (prompt + max_tokens x n) until it settles, so that
        concurrent requests cannot overshoot tokens_per_minute together. Returns what was held."""
        tpm = self.spec.tokens_per_minute
        if tpm is None:
            return 0
        now = time.monotonic() if now is None else now
        self._expire(now)
        if self._tokens_in_window() + num_tokens > tpm:
            raise RateLimitError(
                f"rate limit reached: this request may use up to {num_tokens} tokens (prompt + max_tokens), more than "
                f"the {max(0, tpm - self._tokens_in_window())} left of {tpm} tokens per minute; lower max_tokens or retry later",
                self._retry_after(now),
            )
        self._reserved += num_tokens
        return num_tokens

    def settle_tokens(self, num_reserved: int, num_used: int, now: float | None = None) -> None:
        """Replace a reservation with what the request really used."""
        self._reserved -= num_reserved
        self._tokens.append((time.monotonic() if now is None else now, num_used))

    def _tokens_in_window(self) -> int:
        return self._reserved + sum(n for _, n in self._tokens)

    def _retry_after(self, now: float) -> float:
        return self._tokens[0][0] + WINDOW_S - now if self._tokens else WINDOW_S

    def _expire(self, now: float) -> None:
        while self._requests and self._requests[0] <= now - WINDOW_S:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= now - WINDOW_S:
            self._tokens.popleft()


class Authenticator:
    """None of its methods log or return a key."""

    def __init__(self, specs: list[TenantSpec]):
        self.tenants = [Tenant(s) for s in specs]

    @classmethod
    def from_specs(cls, api_key: str | None, specs: list[TenantSpec]) -> "Authenticator | None":
        """Tenants from a keys file, plus one all-scopes tenant for --api-key; None when there are none."""
        specs = list(specs)
        if api_key is not None:
            specs.append(TenantSpec(name="api-key", key=api_key, scopes=["inference", "admin"]))
        check_unique_names([s.name for s in specs])
        return cls(specs) if specs else None

    def set_default_parallel(self, limit: int | None) -> None:
        """The share of engine slots of every key-file tenant that sets none (the one --api-key,
        alone on its server, gets no limit)."""
        for tenant in self.tenants:
            if tenant.spec.max_parallel_requests is None and tenant.name != "api-key":
                tenant.slots.limit = limit

    def authenticate(self, authorization: str | None) -> Tenant:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        digest = _sha256(presented.strip())
        found = None
        for tenant in self.tenants:  # every key is compared, so timing does not reveal which matched
            if hmac.compare_digest(digest, tenant.spec.digest):
                found = tenant
        if found is None:
            raise AuthError("invalid API key")
        return found
