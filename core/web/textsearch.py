"""Message search by text, for debugging only: ``[trace] debug_text_minutes`` (0, off, by default).

The message trace never stores a message's text. With ``debug_text_minutes`` set, this observer
(``track_event``, like :class:`~.throughput.Throughput`) keeps the text of the messages received
in the last that many minutes **in memory only** (never in the store, a backup or a log), at most
:data:`MAX_MESSAGES` of them and :data:`MAX_TEXT` characters each, so ``GET /-/api/messages?q=``
also matches words of a recent message. A restart forgets it; each replica knows only what it
received itself.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from ..events import Event, MessageReceived
from ..hookspecs import hookimpl

__all__ = ["MAX_MESSAGES", "MAX_TEXT", "TextIndex"]

MAX_MESSAGES = 10_000
MAX_TEXT = 4096


class TextIndex:
    """message id -> (received at, case-folded text) of the last ``minutes`` minutes."""

    def __init__(self, minutes: float, *, max_messages: int = MAX_MESSAGES,
                 clock: Callable[[], float] = time.time) -> None:
        if minutes <= 0:
            raise ValueError("minutes must be > 0")
        self.window = minutes * 60.0
        self.max_messages = max_messages
        self.clock = clock
        self._texts: OrderedDict[str, tuple[float, str]] = OrderedDict()

    @hookimpl
    def track_event(self, event: Event) -> None:
        if isinstance(event, MessageReceived):
            self.add(event.message.id, event.message.text or "")

    def __len__(self) -> int:
        self._expire()
        return len(self._texts)

    def add(self, message_id: str, text: str) -> None:
        if not text:
            return
        self._texts.pop(message_id, None)  # an edit: the newest text, at the end
        self._texts[message_id] = (self.clock(), text[:MAX_TEXT].casefold())
        while len(self._texts) > self.max_messages:
            self._texts.popitem(last=False)
        self._expire()

    def _expire(self) -> None:
        cutoff = self.clock() - self.window
        while self._texts:
            mid, (ts, _) = next(iter(self._texts.items()))
            if ts >= cutoff:
                break
            del self._texts[mid]

    def search(self, q: str, limit: int = 50) -> list[str]:
        """Ids of kept messages whose text contains ``q`` (case-insensitive), newest first."""
        self._expire()
        needle = q.casefold().strip()
        if not needle:
            return []
        out: list[str] = []
        for mid, (_ts, text) in reversed(self._texts.items()):
            if needle in text:
                out.append(mid)
                if len(out) >= limit:
                    break
        return out
