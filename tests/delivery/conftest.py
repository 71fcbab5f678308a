"""Fixtures for delivery tests: a virtual clock, a scriptable fake transport, a store, an engine factory."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway.delivery import DeliveryConfig, DeliveryEngine
from claudemesh_gateway.errors import DeliveryError
from claudemesh_gateway.events import Event
from claudemesh_gateway.gateway import RateLimit
from claudemesh_gateway.messages import (
    Address,
    Message,
    Outbound,
    SendResult,
    address_from_dict,
    address_to_dict,
    message_from_dict,
    message_to_dict,
)
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.sqlite import SqliteStore


class VirtualClock:
    """Time that only moves when a test says so. ``sleep`` parks the caller until ``advance``."""

    def __init__(self, base: float = 1_700_000_000.0) -> None:
        self.base = base
        self.t = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.base + self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.t + delay, next(self._seq), fut))
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()

    def _live(self) -> None:
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)

    def next_deadline(self) -> float | None:
        self._live()
        return self._heap[0][0] if self._heap else None

    def advance(self, dt: float) -> None:
        target = self.t + dt
        self._live()
        while self._heap and self._heap[0][0] <= target:
            _d, _s, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)
        self.t = target

    def advance_to_next(self) -> bool:
        d = self.next_deadline()
        if d is None:
            return False
        self.advance(max(0.0, d - self.t))
        return True


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait (real time, bounded) until ``cond()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def run_virtual(clock: VirtualClock, cond: Callable[[], bool], timeout: float = 10.0,
                      what: str = "condition", limit: float | None = 500.0) -> None:
    """Let the system settle, then jump virtual time to the next timer, until ``cond()`` holds.

    ``limit`` caps how far virtual time may go: the scheduler's safety poll (at 1000 s in these
    tests) is always pending, and jumping to it because a timer was not registered *yet* would
    skip the behaviour under test.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        for _ in range(3):
            if cond():
                return
            await asyncio.sleep(0.002)
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what} (virtual t={clock.t})")
        d = clock.next_deadline()
        if d is not None and (limit is None or d <= limit):
            clock.advance_to_next()


class FakeTransport:
    """Renders ``options["parts"]`` parts; ``on_send(out)`` may raise or block; records everything."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.sent: list[tuple[str, str, int, float]] = []  # (lane, message id, part, virtual t)
        self.attempts: list[tuple[str, str, int, float]] = []
        self.delivered_calls: list[tuple[int, list[tuple[str, ...]]]] = []
        self.failed_calls: list[tuple[int, str, bool]] = []
        self.on_send: Callable[[Outbound], Any] | None = None
        self.limits: Callable[[OutboxItem], Sequence[RateLimit]] = lambda item: ()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight_per_lane = 0
        self.max_lanes_in_flight = 0
        self._n = 0

    async def render(self, item: OutboxItem) -> tuple[list[Outbound], Sequence[RateLimit]]:
        if item.destination["gateway"] == "nope":
            raise DeliveryError("unknown gateway 'nope'", permanent=True)
        msg = message_from_dict(item.message)
        to = address_from_dict(item.destination)
        n = int(item.options.get("parts", 1))
        outs = [
            Outbound(message=msg, to=to, text=f"{msg.text} ({i}/{n})", part=i, parts=n,
                     idempotency_key=f"{msg.id}:{item.lane}:{i}")
            for i in range(1, n + 1)
        ]
        return outs, self.limits(item)

    async def send(self, out: Outbound) -> SendResult:
        lane = out.to.key
        self.in_flight[lane] = self.in_flight.get(lane, 0) + 1
        self.max_in_flight_per_lane = max(self.max_in_flight_per_lane, self.in_flight[lane])
        self.max_lanes_in_flight = max(self.max_lanes_in_flight, sum(1 for v in self.in_flight.values() if v))
        try:
            self.attempts.append((lane, out.message.id, out.part, self.clock.t))
            await asyncio.sleep(0)  # let other lanes interleave
            if self.on_send is not None:
                r = self.on_send(out)
                if asyncio.iscoroutine(r):
                    await r
            self._n += 1
            self.sent.append((lane, out.message.id, out.part, self.clock.t))
            return SendResult(native_ids=(f"n{self._n}",))
        finally:
            self.in_flight[lane] -= 1

    async def delivered(self, item: OutboxItem, results: list[SendResult]) -> None:
        self.delivered_calls.append((item.id, [r.native_ids for r in results]))

    async def failed(self, item: OutboxItem, error: str, permanent: bool) -> None:
        self.failed_calls.append((item.id, error, permanent))

    def ids(self, lane: str) -> list[str]:
        return [m for (ln, m, _p, _t) in self.sent if ln == lane]


def make_item(lane: str, mid: str, *, parts: int = 1, text: str = "hello") -> OutboxItem:
    gw, _, chat = lane.partition("/")
    to = Address(gw, chat)
    msg = Message(id=mid, origin=Address("mesh", "m:#ops"), sender="alice", text=text)
    return OutboxItem(lane=to.key, route="ops", destination=address_to_dict(to), message=message_to_dict(msg),
                      options={"parts": parts})


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def store(tmp_path: Path, vclock: VirtualClock):
    s = SqliteStore(tmp_path / "gw.db", clock=vclock.time, purge_interval=0, synchronous="NORMAL")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def transport(vclock: VirtualClock) -> FakeTransport:
    return FakeTransport(vclock)


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
async def make_engine(store: SqliteStore, transport: FakeTransport, vclock: VirtualClock, events: list[Event]):
    engines: list[DeliveryEngine] = []

    def factory(tr: Any = None, st: Any = None, **cfg: Any) -> DeliveryEngine:
        base = {"poll_interval": 1000.0, "backoff_jitter": 0.0, "drain_timeout": 2.0, "default_limits": {}}
        base.update(cfg)
        e = DeliveryEngine(
            st or store, tr or transport, config=DeliveryConfig(**base), emit=events.append,
            clock=vclock.time, monotonic=vclock.monotonic, sleep=vclock.sleep,
        )
        engines.append(e)
        return e

    yield factory
    for e in engines:
        await e.stop(0)


@pytest.fixture
def dh():
    """Helpers for test modules (conftest is not importable under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(
        FakeTransport=FakeTransport, VirtualClock=VirtualClock, make_item=make_item, until=until,
        run_virtual=run_virtual,
    )
