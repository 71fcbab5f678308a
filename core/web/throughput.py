"""Per-minute counts of the last hour, per route and per gateway, for the dashboard's charts.

An observer plugin (``track_event``) like :class:`~.recent.RecentEvents`: it keeps 60 one-minute
buckets per key in memory (a restart starts the charts afresh) and holds no message content.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..events import DeliveryFailed, Event, MessageDelivered, MessageDropped, MessageQueued, MessageReceived
from ..hookspecs import hookimpl

__all__ = ["KINDS", "Throughput"]

MINUTES = 60
KINDS = ("received", "queued", "delivered", "failed", "dead", "dropped")
MAX_KEYS = 500  # routes or gateways tracked (a plugin inventing route names cannot grow this without bound)


class _Series:
    __slots__ = ("counts", "minute")

    def __init__(self, minute: int) -> None:
        self.minute = minute  # the newest bucket's minute (epoch minutes)
        self.counts = {k: [0] * MINUTES for k in KINDS}

    def roll(self, minute: int) -> None:
        """Advance to ``minute``: buckets that fell out of the hour are zeroed."""
        gap = minute - self.minute
        if gap <= 0:
            return
        for arr in self.counts.values():
            if gap >= MINUTES:
                arr[:] = [0] * MINUTES
            else:
                del arr[:gap]
                arr.extend([0] * gap)
        self.minute = minute

    def add(self, kind: str, minute: int) -> None:
        self.roll(minute)
        offset = self.minute - minute
        if 0 <= offset < MINUTES:
            self.counts[kind][MINUTES - 1 - offset] += 1


class Throughput:
    """``snapshot()`` -> ``{"minutes": [epoch seconds of each bucket], "routes": {name: {kind: [60]}},
    "gateways": {name: {kind: [60]}}}``, oldest bucket first; kinds: :data:`KINDS`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.routes: dict[str, _Series] = {}
        self.gateways: dict[str, _Series] = {}

    @hookimpl
    def track_event(self, event: Event) -> None:
        self.observe(event)

    def _bump(self, table: dict[str, _Series], key: str, kind: str, minute: int) -> None:
        series = table.get(key)
        if series is None:
            if len(table) >= MAX_KEYS:
                return
            series = table[key] = _Series(minute)
        series.add(kind, minute)

    def observe(self, event: Event) -> None:
        minute = int(event.created.timestamp() // 60)
        if isinstance(event, MessageReceived):
            self._bump(self.gateways, event.message.origin.gateway, "received", minute)
        elif isinstance(event, MessageQueued):
            self._bump(self.routes, event.route, "queued", minute)
        elif isinstance(event, MessageDelivered):
            self._bump(self.routes, event.route, "delivered", minute)
            self._bump(self.gateways, event.to.gateway, "delivered", minute)
        elif isinstance(event, DeliveryFailed):
            kind = "dead" if event.permanent else "failed"
            self._bump(self.routes, event.route, kind, minute)
            self._bump(self.gateways, event.to.gateway, kind, minute)
        elif isinstance(event, MessageDropped) and event.reason != "duplicate":
            self._bump(self.gateways, event.message.origin.gateway, "dropped", minute)

    def snapshot(self) -> dict[str, Any]:
        now_minute = int(self.clock() // 60)
        out: dict[str, Any] = {"minutes": [(now_minute - MINUTES + 1 + i) * 60 for i in range(MINUTES)]}
        for name, table in (("routes", self.routes), ("gateways", self.gateways)):
            view = {}
            for key, series in sorted(table.items()):
                series.roll(now_minute)
                view[key] = {k: list(v) for k, v in series.counts.items()}
            out[name] = view
        return out
