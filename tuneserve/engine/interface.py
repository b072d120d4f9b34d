"""The engine as serving sees it: a small interface that vLLM's AsyncLLM fulfils (and a FakeEngine
in the tests, for faults the real one cannot be made to produce on demand)."""

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Engine(Protocol):
    """What serving needs from vLLM's AsyncLLM (a FakeEngine implements it for fault tests)."""

    @property
    def errored(self) -> bool: ...

    def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    async def add_lora(self, lora_request: Any) -> bool: ...

    async def remove_lora(self, lora_id: int) -> bool: ...

    async def list_loras(self) -> set[int]: ...

    def get_num_unfinished_requests(self) -> int: ...

    def shutdown(self) -> None: ...
