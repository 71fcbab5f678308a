"""Which thread a Slack message is in: replies remembered by ts, kept across restarts.

Slack threads hang off their parent's ``ts``; a mesh reply to a Slack *reply* must go to the
parent, so every reply seen or posted is remembered as ``(channel, ts) -> parent ts``."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

__all__ = ["PARENTS_KEY", "PARENTS_SAVED", "ThreadMap"]

log = logging.getLogger(__name__)

PARENTS_KEY = "thread_parents"  # kv: [[channel, reply ts, parent ts], ...], newest last
PARENTS_SAVED = 5000
PARENTS_KEPT = 20000  # in memory


class ThreadMap:
    """``(channel, ts) -> thread parent ts``, newest last, saved in the gateway's kv (``ctx``)."""

    def __init__(self, name: str, ctx: Any) -> None:  # ctx: GatewayContext
        self.name = name
        self.ctx = ctx
        self._parents: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def load(self) -> None:
        try:
            saved = await self.ctx.kv_get(PARENTS_KEY) or []
        except Exception as exc:  # noqa: BLE001 - only costs thread placement of old replies
            log.warning("gateway %s: could not load the thread map (%s)", self.name, type(exc).__name__)
            return
        for row in saved:
            if isinstance(row, list) and len(row) == 3 and all(isinstance(x, str) for x in row):
                self._parents.setdefault((row[0], row[1]), row[2])

    async def save(self) -> None:
        rows = [[c, ts, p] for (c, ts), p in list(self._parents.items())[-PARENTS_SAVED:]]
        try:
            await self.ctx.kv_set(PARENTS_KEY, rows)
        except Exception as exc:  # noqa: BLE001
            log.warning("gateway %s: could not save the thread map (%s)", self.name, type(exc).__name__)

    def remember(self, channel: str, ts: str, parent: str | None) -> None:
        """``ts`` in ``channel`` is a reply in the thread of ``parent`` (nothing when it is no reply)."""
        if parent and parent != ts:
            self._parents[(channel, ts)] = parent
            self._parents.move_to_end((channel, ts))
            while len(self._parents) > PARENTS_KEPT:
                self._parents.popitem(last=False)

    def parent(self, channel: str, ts: str, default: str | None = None) -> str | None:
        """The thread parent of ``ts``, or ``default`` when it is not a known reply."""
        return self._parents.get((channel, ts), default)
