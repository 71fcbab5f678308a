"""Leases and shared token buckets between replicas sharing one PostgreSQL store; on SQLite (one
process) every lease is granted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from claudemesh_gateway.store.leases import Leases, SharedTokenBucket, supports_leases
from claudemesh_gateway.store.sqlite import SqliteStore


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_leases_on_sqlite_are_always_granted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.db", purge_interval=0)
    await store.open()
    try:
        assert not supports_leases(store)
        leases = Leases(store, replica="one")
        leases.start()
        assert await leases.acquire("lane:a") and await leases.hold("topic:x")
        assert leases.holds("anything") and leases.held() == {}
        assert leases.describe()["shared"] is False
        await leases.close()
    finally:
        await store.close()


@pytest.fixture
async def stores(pg_schema_dsn: str):
    from claudemesh_gateway.store.postgres import PostgresStore

    out = [PostgresStore(pg_schema_dsn, purge_interval=0) for _ in range(3)]
    for s in out:
        await s.open()
    yield out
    for s in out:
        await s.close()


async def test_lease_one_owner_release_and_refcount(stores) -> None:
    a, b = Leases(stores[0], replica="a"), Leases(stores[1], replica="b")
    assert a.shared and a.owner != b.owner
    assert await a.acquire("lane:x")
    assert not await b.acquire("lane:x")  # one replica owns a lane at a time
    assert await b.acquire("lane:y")
    assert await a.acquire("lane:x")  # shared inside one process: counted
    await a.release("lane:x")
    assert not await b.acquire("lane:x")  # still one holder left in a
    await a.release("lane:x")
    assert await b.acquire("lane:x")  # released: the other replica takes it at once
    assert set(b.held()) == {"lane:x", "lane:y"} and a.held() == {}
    listed = {r["name"]: r["owner"] for r in await stores[2].lease_list()}
    assert listed == {"lane:x": b.owner, "lane:y": b.owner}
    await b.close()
    assert await stores[2].lease_list() == []  # close hands everything over


async def test_lease_takeover_after_expiry_and_loss_is_noticed(stores) -> None:
    mono = Mono()
    a = Leases(stores[0], replica="a", ttl=1.0, monotonic=mono)
    b = Leases(stores[1], replica="b", ttl=1.0)
    lost: list[str] = []
    a.on_lost(lost.append)
    assert await a.hold("topic:m:t1")
    assert not await b.hold("topic:m:t1")
    # replica a stops renewing (killed, frozen): b gets the lease once the database says it expired
    for _ in range(100):
        if await b.hold("topic:m:t1"):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the lease was never taken over")
    assert a.holds("topic:m:t1")  # a's local clock has not moved: it would still act...
    mono.t += 0.8  # ...until ttl * 0.8 after its last renewal, which is before the database expiry
    assert not a.holds("topic:m:t1")
    await a.renew_once()
    assert lost == ["topic:m:t1"] and a.lost == 1
    assert not await a.hold("topic:m:t1")  # b renews its own
    await b.close()


async def test_lease_renewal_keeps_it_and_a_lost_one_is_dropped(stores) -> None:
    a = Leases(stores[0], replica="a", ttl=30.0)
    assert await a.hold("gateway:tg:poll")
    await a.renew_once()
    assert a.holds("gateway:tg:poll")
    # someone removes the row and another replica takes it (an operator, or an expiry we missed)
    c = Leases(stores[1], replica="c", ttl=30.0)
    await stores[2].lease_release(["gateway:tg:poll"], a.owner)
    assert await c.hold("gateway:tg:poll")
    lost: list[str] = []
    a.on_lost(lost.append)
    await a.renew_once()
    assert lost == ["gateway:tg:poll"] and not a.holds("gateway:tg:poll")
    await a.close()
    await c.close()


async def test_shared_token_bucket_is_one_bucket_for_every_replica(stores) -> None:
    # burst 6, a refill so slow that none accrues during the test: six takes in all, whoever asks
    buckets = [SharedTokenBucket(s, "member:mesh1:abc", 6, 0.01) for s in stores]
    waits = await asyncio.gather(*(s.bucket_take("member:mesh1:abc", 6, 0.01 / 60) for s in stores for _ in range(3)))
    assert sorted(w == 0 for w in waits).count(True) == 6
    assert all(w > 60 for w in waits if w)  # the seventh token is minutes away
    buckets[0].drain()
    await asyncio.sleep(0)
    assert buckets[0].wait_time() > 0
    await stores[0].flush()
    # another bucket name is another member: full
    assert await stores[1].bucket_take("member:mesh1:other", 6, 1.0) == 0


async def test_shared_token_bucket_acquire_waits_for_the_refill(stores) -> None:
    b = SharedTokenBucket(stores[0], "member:m:fast", 2, 600.0)  # 10 tokens/s
    assert await b.acquire() == 0 and await b.acquire() == 0
    waited = await b.acquire()  # the bucket is empty: waits for a refill, then takes
    assert waited > 0
