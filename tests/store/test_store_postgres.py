"""PostgreSQL-only parts of the store: versioned migrations under an advisory lock (several
replicas starting at once), a newer schema refused, the DSN kept out of every error, dedup across
two stores on one database. The contract itself runs in test_store.py on both backends."""

from __future__ import annotations

import asyncio

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="PostgreSQL tests skipped: asyncpg is not installed")

from claudemesh_gateway.errors import StartupError
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.postgres import (
    SCHEMA_VERSION,
    PostgresStore,
    dsn_secrets,
    probe_schema,
)


def item(lane: str, mid: str) -> OutboxItem:
    return OutboxItem(lane=lane, route="r", destination={"gateway": "g", "chat": lane}, message={"id": mid})


async def test_store_postgres_concurrent_replicas_migrate_once(pg_schema_dsn: str) -> None:
    assert await probe_schema(pg_schema_dsn) == 0
    stores = [PostgresStore(pg_schema_dsn, purge_interval=0) for _ in range(5)]
    await asyncio.gather(*(s.open() for s in stores))  # five replicas starting together
    try:
        assert await probe_schema(pg_schema_dsn) == SCHEMA_VERSION
        assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * 5
        c = await asyncpg.connect(pg_schema_dsn)
        try:
            assert await c.fetchval("SELECT count(*) FROM claudemesh_schema") == 1
        finally:
            await c.close()
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_store_postgres_refuses_a_newer_schema(pg_schema_dsn: str) -> None:
    s = PostgresStore(pg_schema_dsn, purge_interval=0)
    await s.open()
    await s.close()
    c = await asyncpg.connect(pg_schema_dsn)
    try:
        await c.execute("UPDATE claudemesh_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await c.close()
    with pytest.raises(StartupError, match="newer"):
        await PostgresStore(pg_schema_dsn, purge_interval=0).open()


async def test_store_postgres_dedup_across_two_replicas(pg_schema_dsn: str) -> None:
    a, b = PostgresStore(pg_schema_dsn, purge_interval=0), PostgresStore(pg_schema_dsn, purge_interval=0)
    await a.open()
    await b.open()
    try:
        # the same 300 ids arrive at both replicas at once (a webhook retried to another replica)
        ra, rb = await asyncio.gather(
            asyncio.gather(*(a.accept(f"m{i}", [item(f"l/{i % 3}", f"m{i}")]) for i in range(300))),
            asyncio.gather(*(b.accept(f"m{i}", [item(f"l/{i % 3}", f"m{i}")]) for i in range(299, -1, -1))),
        )
        won = [x or y for x, y in zip(ra, reversed(rb), strict=True)]
        both = [x and y for x, y in zip(ra, reversed(rb), strict=True)]
        assert all(won) and not any(both)  # exactly one replica enqueued each id
        assert await a.outbox_count() == 300
    finally:
        await a.close()
        await b.close()


async def test_store_postgres_errors_never_show_the_dsn(pg_dsn: str) -> None:
    secret_dsn = "postgresql://gw:s3cr3t-pw@127.0.0.1:1/nodb"  # port 1: nothing listens
    assert dsn_secrets(secret_dsn) == (secret_dsn, "s3cr3t-pw")
    assert dsn_secrets("host=h password=p4ss user=u") == ("host=h password=p4ss user=u", "p4ss")
    s = PostgresStore(secret_dsn, purge_interval=0, connect_timeout=2)
    assert "s3cr3t" not in repr(s)
    with pytest.raises(StartupError) as e:
        await s.open()
    assert "s3cr3t" not in str(e.value) and "127.0.0.1:1/nodb" in str(e.value)
    with pytest.raises(StartupError, match="cannot connect") as e2:
        await probe_schema(secret_dsn, timeout=2)
    assert "s3cr3t" not in str(e2.value)
    # a wrong password is named as such, still without the password
    bad = pg_dsn.replace("postgresql://postgres@", "postgresql://nosuchuser:hunter2@")
    with pytest.raises(StartupError) as e3:
        await probe_schema(bad, timeout=5)
    assert "hunter2" not in str(e3.value) and "nosuchuser" in str(e3.value)


async def test_store_postgres_parallel_writers_keep_dedup_and_lease_order(pg_schema_dsn: str) -> None:
    from claudemesh_gateway.store.leases import Leases

    s = PostgresStore(pg_schema_dsn, purge_interval=0, writers=3, max_pool=6)
    await s.open()
    try:
        assert s.writers == 3
        n = 600
        res = await asyncio.gather(*(s.accept(f"p{i % (n // 2)}", [item(f"l/{i % 5}", f"p{i}")]) for i in range(n)))
        assert sum(res) == n // 2 and await s.outbox_count() == n // 2  # exactly one copy of each id
        # release then re-acquire from two tasks at once: the lease row must survive (one writer, in order)
        leases, other = Leases(s, replica="a"), Leases(s, replica="b")
        for _ in range(20):
            assert await leases.acquire("lane:x")
            await asyncio.gather(leases.release("lane:x"), leases.acquire("lane:x"))
            assert not await other.acquire("lane:x")  # still ours in the database
            await leases.release("lane:x")
    finally:
        await s.close()


async def test_store_postgres_accept_many_keeps_the_order_with_parallel_writers(pg_schema_dsn: str) -> None:
    for writers in (1, 3):
        s = PostgresStore(pg_schema_dsn, purge_interval=0, writers=writers, max_pool=6)
        await s.open()
        try:
            lane = f"l/w{writers}"
            ids = [f"w{writers}-{i}" for i in range(120)]
            outcomes = await s.accept_many([(mid, [item(lane, mid)], [("mesh/m:#t", [mid])]) for mid in ids])
            assert outcomes == [True] * len(ids)
            assert [h.message["id"] for h in await s.peek(lane, 200)] == ids
        finally:
            await s.close()


async def test_store_postgres_two_replicas_trace_the_same_messages_at_once(pg_schema_dsn: str) -> None:
    # replicas write events of the same messages in the same moment (one received, the other
    # delivering): upserts lock the summary rows in one order, so no deadlock, and nothing is lost
    from claudemesh_gateway.store.base import TraceEvent

    a, b = PostgresStore(pg_schema_dsn, purge_interval=0), PostgresStore(pg_schema_dsn, purge_interval=0)
    await a.open()
    await b.open()
    try:
        ids = [f"m{i}" for i in range(200)]

        def events(order: list[str], step: str) -> list[TraceEvent]:
            return [TraceEvent(message_id=m, step=step, ts=1.0, native_ids=(f"{step}-{m}",),
                               counts={"delivered": 1}) for m in order]

        for _ in range(5):
            await asyncio.gather(a.trace_write(events(ids, "queued")), b.trace_write(events(ids[::-1], "delivered")))
        t = await a.trace_get("m7")
        assert t is not None and len(t["events"]) == 10 and t["summary"]["delivered"] == 10
        assert await b.trace_resolve("delivered-m7") == ["m7"] and await a.trace_resolve("queued-m7") == ["m7"]
    finally:
        await a.close()
        await b.close()
