"""Small asyncio helpers that keep cancellation intact (Python 3.11's ``wait_for`` can swallow a
cancel that races with the inner awaitable finishing; ``asyncio.timeout`` does not)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["TaskOwner", "wait_event", "with_timeout"]


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


async def with_timeout(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw`` with a deadline (raises TimeoutError), cancellation-safe."""
    async with asyncio.timeout(timeout):
        return await aw


class TaskOwner:
    """Owns one named background task: ``start`` creates it once, ``stop`` cancels and awaits it."""

    _task: asyncio.Task[None] | None = None

    def _start_task(self, loop: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        if self._task is None:
            self._task = asyncio.create_task(loop(), name=name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
