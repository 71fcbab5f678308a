"""Test helpers for claudemesh-gateway and for third-party gateway plugins.

Opt in from a plugin repository with ``pytest_plugins = ["claudemesh_gateway.testing"]``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

import aiohttp

from .events import Event, GatewayState
from .gateway import Binding, SubmitResult
from .messages import Message

__all__ = ["RecordingContext"]


class RecordingContext:
    """A ``GatewayContext`` that records what a gateway hands to the core.

    ``submitted`` holds accepted messages; ids already seen return ``duplicate``,
    as the real inbox ledger does. ``kv`` is in memory. Use it to test a gateway
    in isolation against a fake vendor server.
    """

    def __init__(self, name: str, http: aiohttp.ClientSession, bindings: Sequence[Binding] = ()) -> None:
        self.name = name
        self.http = http
        self._bindings = list(bindings)
        self.submitted: list[Message] = []
        self.events: list[Event] = []
        self.states: list[tuple[GatewayState, str]] = []
        self.kv: dict[str, Any] = {}
        self.secrets: list[str] = []
        self.origin_map: dict[tuple[str, str], str] = {}
        self.fail_submit: Exception | None = None
        self._seen: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def bindings(self) -> Sequence[Binding]:
        return self._bindings

    def set_bindings(self, bindings: Sequence[Binding]) -> None:
        self._bindings = list(bindings)

    async def submit(self, message: Message) -> SubmitResult:
        if self.fail_submit is not None:
            raise self.fail_submit
        if message.id in self._seen:
            return SubmitResult(status="duplicate")
        self._seen.add(message.id)
        self.submitted.append(message)
        self._changed.set()
        return SubmitResult(status="queued", destinations=1)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Message]:
        async def _wait() -> None:
            while len(self.submitted) < count:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(_wait(), timeout)
        return self.submitted

    async def kv_get(self, key: str) -> Any | None:
        return copy.deepcopy(self.kv.get(key))

    async def kv_set(self, key: str, value: Any) -> None:
        self.kv[key] = copy.deepcopy(value)

    async def kv_delete(self, key: str) -> None:
        self.kv.pop(key, None)

    async def lookup_origin(self, native_id: str, chat: str) -> str | None:
        return self.origin_map.get((chat, native_id))

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def set_state(self, state: GatewayState, detail: str = "") -> None:
        self.states.append((state, detail))

    def register_secret(self, value: str) -> None:
        self.secrets.append(value)
