"""Small asyncio helpers that keep cancellation intact (Python 3.11's ``wait_for`` can swallow a
cancel that races with the inner awaitable finishing; ``asyncio.timeout`` does not)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["wait_event", "with_timeout"]


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
