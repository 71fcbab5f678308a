"""A bounded in-memory log of recent deliveries and failures, for the dashboard."""

from __future__ import annotations

import collections
from typing import Any

from ..events import DeliveryFailed, DeliveryStatus, Event, MessageDelivered, MessageDropped
from ..hookspecs import hookimpl

__all__ = ["RecentEvents"]


class RecentEvents:
    """Observer plugin keeping the last ``size`` delivery outcomes. Holds no message bodies."""

    def __init__(self, size: int = 200) -> None:
        self._items: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._seq = 0

    @hookimpl
    def track_event(self, event: Event) -> None:
        self.observe(event)

    def observe(self, event: Event) -> None:
        entry: dict[str, Any] | None = None
        if isinstance(event, MessageDelivered):
            entry = {"kind": "delivered", "route": event.route, "to": str(event.to), "message": event.message.id,
                     "latency_ms": round(event.latency_s * 1000, 1)}
        elif isinstance(event, DeliveryFailed):
            entry = {"kind": "failed" if event.permanent else "retrying", "route": event.route, "to": str(event.to),
                     "message": event.message.id, "error": event.error}
        elif isinstance(event, MessageDropped):
            entry = {"kind": "dropped", "message": event.message.id, "from": str(event.message.origin),
                     "reason": event.reason}
        elif isinstance(event, DeliveryStatus):
            entry = {"kind": f"status:{event.status}", "to": event.gateway, "message": event.native_id,
                     "error": event.error}
        if entry is not None:
            self._seq += 1
            entry["seq"] = self._seq
            entry["at"] = event.created.isoformat()
            self._items.append(entry)

    def latest(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self._items)[-limit:][::-1]
