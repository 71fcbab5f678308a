"""Several delivery engines (replicas) on one PostgreSQL store: a lease per lane means one replica
delivers a lane at a time, so per-chat order holds and nothing is sent twice; when the owner dies
another replica takes the lane over once the lease expires."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from claudemesh_gateway.delivery import DeliveryConfig, DeliveryEngine
from claudemesh_gateway.messages import Outbound, SendResult
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.leases import Leases

from .conftest import make_item, until


class SharedSink:
    """One destination platform seen by every replica: records sends, counts concurrency per lane."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []  # (replica, lane, message id)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight_per_lane = 0
        self.gate: asyncio.Event | None = None  # when set: sends block until it is set

    def transport(self, replica: str) -> _Transport:
        return _Transport(self, replica)


class _Transport:
    def __init__(self, sink: SharedSink, replica: str) -> None:
        self.sink, self.replica = sink, replica

    async def render(self, item: OutboxItem):
        from claudemesh_gateway.messages import address_from_dict, message_from_dict

        msg, to = message_from_dict(item.message), address_from_dict(item.destination)
        return [Outbound(message=msg, to=to, text=msg.text, part=1, parts=1)], ()

    async def send(self, out: Outbound) -> SendResult:
        lane = out.to.key
        self.sink.in_flight[lane] += 1
        self.sink.max_in_flight_per_lane = max(self.sink.max_in_flight_per_lane, self.sink.in_flight[lane])
        try:
            await asyncio.sleep(0.001)  # other replicas get a chance to interleave
            if self.sink.gate is not None:
                await self.sink.gate.wait()
            self.sink.sent.append((self.replica, lane, out.message.id))
            return SendResult(native_ids=(out.message.id,))
        finally:
            self.sink.in_flight[lane] -= 1

    async def delivered(self, item: OutboxItem, results: list[SendResult]) -> None:
        return None


@pytest.fixture
async def replicas(pg_schema_dsn: str):
    from claudemesh_gateway.store.postgres import PostgresStore

    sink = SharedSink()
    made: list[tuple[PostgresStore, Leases, DeliveryEngine]] = []

    async def make(name: str, *, ttl: float = 15.0, poll: float = 0.3) -> tuple[PostgresStore, Leases, DeliveryEngine]:
        store = PostgresStore(pg_schema_dsn, purge_interval=0)
        await store.open()
        leases = Leases(store, replica=name, ttl=ttl)
        leases.start()
        cfg = DeliveryConfig(poll_interval=poll, backoff_jitter=0.0, drain_timeout=2.0, default_limits={})
        engine = DeliveryEngine(store, sink.transport(name), config=cfg, lanes=leases.lanes())
        await engine.start()
        made.append((store, leases, engine))
        return store, leases, engine

    yield sink, make
    for store, leases, engine in made:
        await engine.stop(1.0)
        await leases.close()
        await store.close()


async def test_three_replicas_deliver_each_lane_in_order_once(replicas) -> None:
    sink, make = replicas
    reps = [await make(n) for n in ("r1", "r2", "r3")]
    lanes = [f"tg/{c}" for c in range(6)]
    n = 600

    async def feed(k: int) -> None:  # every replica accepts a share of every lane (webhooks anywhere)
        store, _leases, engine = reps[k]
        for i in range(k, n, 3):
            lane = lanes[i % len(lanes)]
            assert await store.accept(f"m{i}", [make_item(lane, f"{i:04d}")])
            engine.kick(lane)

    await asyncio.gather(*(feed(k) for k in range(3)))
    await until(lambda: len(sink.sent) >= n, timeout=60, what=f"{n} deliveries")
    await asyncio.sleep(0.3)  # a duplicate would show up now
    ids = [m for _r, _l, m in sink.sent]
    assert len(ids) == n and len(set(ids)) == n  # nothing lost, nothing delivered by two replicas
    assert sink.max_in_flight_per_lane == 1  # one replica sends on a lane at a time
    for lane in lanes:  # per-chat order: the order each lane was enqueued in
        got = [m for _r, ln, m in sink.sent if ln == lane]
        assert got == sorted(got), lane
    assert await reps[0][0].outbox_count() == 0


async def test_a_dead_owners_lane_is_taken_over_after_the_lease(replicas) -> None:
    sink, make = replicas
    s1, l1, e1 = await make("r1", ttl=1.5)
    _s2, l2, e2 = await make("r2", ttl=1.5)
    sink.gate = asyncio.Event()  # the first send blocks: r1 owns the lane mid-send
    for i in range(5):
        await s1.accept(f"x{i}", [make_item("tg/9", f"{i}")])
    e1.kick("tg/9")
    await until(lambda: "lane:tg/9" in l1.held(), timeout=10, what="r1 to own the lane")
    e2.kick("tg/9")
    await asyncio.sleep(0.2)
    assert "lane:tg/9" not in l2.held()  # r2 leaves a lane r1 owns alone
    # r1 dies without a word: its renewer and its engine stop, the lease is not released
    l1.abandon()  # (close() would release; a killed process does not)
    await e1.stop(0.0)
    sink.gate.set()
    await until(lambda: len({m for _r, _l, m in sink.sent}) >= 5, timeout=30, what="takeover by r2")
    by_r2 = [m for r, _l, m in sink.sent if r == "r2"]
    assert by_r2 and by_r2 == sorted(by_r2)
    assert [m for _r, _l, m in sink.sent][-len(by_r2):] == by_r2
    assert sorted({m for _r, _l, m in sink.sent}) == ["0", "1", "2", "3", "4"]
