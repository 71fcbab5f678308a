"""Tracked fire-and-forget tasks (mautrix ``background_task`` + aiohttp's warning about lost tasks).

``asyncio.create_task`` keeps only a weak reference: an unreferenced task can be
garbage-collected mid-flight, and its exception is reported only as "Task
exception was never retrieved". :class:`TaskSupervisor` keeps a strong reference
until each task finishes, logs failures once, and on shutdown waits ``grace``
seconds before cancelling what is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["TaskSupervisor"]

log = logging.getLogger(__name__)


class TaskSupervisor:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, what: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background. Raises RuntimeError once :meth:`aclose` has begun
        (the coroutine is closed, never left un-awaited)."""
        if self._closing:
            coro.close()
            raise RuntimeError(f"{self.name}: shutting down, refusing {what}")
        task = asyncio.get_running_loop().create_task(self._guard(coro, what), name=f"{self.name}:{what}")
        self._tasks.add(task)  # strong reference until done
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: background %s failed", self.name, what)

    async def aclose(self, grace: float) -> None:
        """Refuse new work, wait up to ``grace`` seconds for running tasks, cancel the rest."""
        self._closing = True
        while self._tasks:
            tasks = set(self._tasks)
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning("%s: cancelling %d background task(s) still running after %.1fs",
                            self.name, len(pending), grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            grace = 0.0
