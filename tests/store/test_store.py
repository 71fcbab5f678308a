"""The store contract on both backends (SQLite and PostgreSQL, see conftest.py): atomicity, dedup,
group commit, ordering, dead letters, map, kv, audit, reopening. SQLite-only tests (file mode,
online backup, PRAGMA user_version migrations) are marked as such by their names."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from pathlib import Path

import pytest
from claudemesh_gateway.errors import StartupError
from claudemesh_gateway.store.base import OutboxItem, Store
from claudemesh_gateway.store.sqlite import SCHEMA_VERSION, SqliteStore

from .conftest import Backend, Clock


def item(lane: str = "telegram/42", text: str = "hi", **kw) -> OutboxItem:
    gw, _, chat = lane.partition("/")
    return OutboxItem(
        lane=lane, route=kw.pop("route", "ops"), destination={"gateway": gw, "chat": chat, "thread": None},
        message={"id": kw.pop("mid", "m"), "text": text}, options=kw.pop("options", {"a": 1}), **kw,
    )


async def test_store_accept_is_atomic_and_dedups(store) -> None:
    assert await store.accept("mesh:m:1", [item("telegram/1", mid="a"), item("slack/C1", mid="a")])
    assert await store.seen("mesh:m:1")
    assert not await store.seen("mesh:m:2")
    # a duplicate writes nothing, even with different items
    assert not await store.accept("mesh:m:1", [item("telegram/1", mid="b")])
    depths = await store.outbox_depths()
    assert {k: v[0] for k, v in depths.items()} == {"telegram/1": 1, "slack/C1": 1}
    head = await store.head("telegram/1")
    assert head is not None and head.message == {"id": "a", "text": "hi"}
    assert head.destination == {"gateway": "telegram", "chat": "1", "thread": None}
    assert head.options == {"a": 1} and head.route == "ops" and head.enqueued_at == store.clock()
    # accept with no destinations still records the id (a routed-nowhere message is not reprocessed)
    assert await store.accept("mesh:m:3", [])
    assert await store.seen("mesh:m:3")


async def test_store_group_commit_under_2000_concurrent_accepts(store) -> None:
    n = 2000
    results = await asyncio.gather(
        *(store.accept(f"id{i}", [item(f"telegram/{i % 50}", mid=str(i))]) for i in range(n)),
        # duplicates racing in the same batches
        *(store.accept(f"id{i}", [item(f"telegram/{i % 50}", mid="dup")]) for i in range(0, n, 100)),
    )
    assert results[:n] == [True] * n
    assert results[n:] == [False] * (n // 100)
    assert await store.outbox_count() == n
    # far fewer commits than writes: group commit at work
    assert store.batches < n / 10
    # per-lane order is insertion order
    lane = await store.peek("telegram/7", 100)
    assert [int(i.message["id"]) for i in lane] == list(range(7, n, 50))


async def test_store_failing_operation_fails_only_itself(store, backend: Backend) -> None:
    bad = OutboxItem(lane=None, route="r", destination={}, message={})  # type: ignore[arg-type]
    coros = [store.accept(f"ok{i}", [item(mid=str(i))]) for i in range(20)]
    coros.insert(10, store.accept("bad", [item(mid="x"), bad]))
    results = await asyncio.gather(*coros, return_exceptions=True)
    assert isinstance(results[10], backend.integrity_error)
    assert results[:10] + results[11:] == [True] * 20
    assert not await store.seen("bad")  # its inbox insert was rolled back with it
    assert await store.outbox_count() == 20
    assert store.op_errors == 1
    # the id can be accepted once the problem is fixed
    assert await store.accept("bad", [item(mid="x")])


async def test_store_head_progress_reschedule_ready_lanes(store, clock: Clock) -> None:
    await store.accept("1", [item("a/1", mid="1"), item("b/1", mid="1")])
    await store.accept("2", [item("a/1", mid="2")])
    now = clock()
    assert await store.ready_lanes(now) == ["a/1", "b/1"]
    h = await store.head("a/1")
    assert h is not None and h.message["id"] == "1" and h.progress == 0
    await store.progress(h.id, 2)
    await store.reschedule(h.id, not_before=now + 30, attempts=1, error="429")
    h2 = await store.head("a/1")  # head regardless of not_before
    assert h2 is not None and (h2.id, h2.progress, h2.attempts, h2.not_before, h2.last_error) == (
        h.id, 2, 1, now + 30, "429")
    # a lane whose head waits is not ready, even though a later item has no delay
    assert await store.ready_lanes(now) == ["b/1"]
    assert await store.next_due(now) == now + 30
    assert await store.ready_lanes(now + 30) == ["a/1", "b/1"]
    await store.complete(h.id)
    h3 = await store.head("a/1")
    assert h3 is not None and h3.message["id"] == "2"
    await store.complete(h3.id)
    assert await store.head("a/1") is None
    assert await store.ready_lanes(now) == ["b/1"]
    assert await store.next_due(now) is None


async def test_store_outbox_depths(store, clock: Clock) -> None:
    await store.accept("1", [item("a/1")])
    clock.t += 5
    await store.accept("2", [item("a/1"), item("b/2")])
    d = await store.outbox_depths()
    assert d == {"a/1": (2, clock.t - 5), "b/2": (1, clock.t)}


async def test_store_dead_letter_retry_drop(store, clock: Clock) -> None:
    await store.accept("1", [item("a/1", mid="1")])
    await store.accept("2", [item("a/1", mid="2")])
    await store.accept("3", [item("b/1", mid="3")])
    first = await store.head("a/1")
    assert first is not None
    await store.progress(first.id, 1)
    await store.reschedule(first.id, not_before=clock() + 99, attempts=7, error="boom")
    await store.dead_letter(first.id, "chat not found")
    await store.dead_letter(first.id, "again")  # gone already: a no-op, not an error
    b = await store.head("b/1")
    assert b is not None
    await store.dead_letter(b.id, "blocked")
    assert await store.dlq_count() == 2
    dl = await store.dlq_list()
    assert {d.id for d in dl} == {first.id, b.id}
    d1 = next(d for d in dl if d.id == first.id)
    assert d1.reason == "chat not found" and d1.failed_at == clock()
    assert d1.item.attempts == 7 and d1.item.message["id"] == "1" and d1.item.last_error == "boom"
    assert (await store.head("a/1")).message["id"] == "2"  # type: ignore[union-attr]

    clock.t += 100
    assert await store.dlq_retry([first.id]) == 1
    back = (await store.peek("a/1"))[-1]  # re-queued behind what its lane holds meanwhile
    assert back.message["id"] == "1" and back.id > first.id
    assert (back.attempts, back.not_before, back.last_error, back.progress) == (0, 0.0, "", 1)
    assert back.enqueued_at == clock()  # max_age counts from the retry
    assert await store.dlq_count() == 1
    assert await store.dlq_retry([]) == 0
    assert await store.dlq_retry([first.id]) == 0  # not a dead letter any more
    assert await store.dlq_drop([first.id]) == 0
    assert await store.dlq_drop() == 1
    assert await store.dlq_count() == 0 and await store.dlq_list() == []
    # retry of everything, in their original order
    for it in await store.peek("a/1"):
        await store.dead_letter(it.id, "x")
    assert await store.dlq_retry() == 2
    assert [i.message["id"] for i in await store.peek("a/1")] == ["2", "1"]


async def test_store_lanes_after_and_max_id(store) -> None:
    assert await store.max_id() == 0
    assert await store.lanes_after(0) == ([], 0)
    await store.accept("1", [item("a/1"), item("b/1")])
    high = await store.max_id()
    assert high == 2
    await store.accept("2", [item("c/1"), item("a/1"), item("c/1")])
    lanes, new_high = await store.lanes_after(high)
    assert sorted(lanes) == ["a/1", "c/1"] and new_high == 5
    await store.complete(5)
    assert await store.max_id() == 5  # ids are never reused


async def test_store_message_map_both_ways(store) -> None:
    await store.map_put("mesh:m:1", "telegram/42", ["100", "101"])
    await store.map_put("mesh:m:1", "slack/C1", ["1700.1"])
    await store.map_put("mesh:m:2", "telegram/43", ["100"])
    assert await store.map_get("mesh:m:1", "telegram/42") == ["100", "101"]
    assert await store.map_get("mesh:m:1", "slack/C1") == ["1700.1"]
    assert await store.map_get("mesh:m:1", "telegram/43") == []
    assert await store.map_reverse("telegram/42", "101") == "mesh:m:1"
    assert await store.map_reverse("telegram/43", "100") == "mesh:m:2"
    assert await store.map_reverse("telegram/4", "100") in {"mesh:m:1", "mesh:m:2"}
    assert await store.map_reverse("slack/", "100") is None
    await store.map_put("mesh:m:1", "telegram/42", ["200"])  # replaces
    assert await store.map_get("mesh:m:1", "telegram/42") == ["200"]
    assert await store.map_reverse("telegram/42", "101") is None


async def test_store_message_map_concurrent_writes_last_wins(store) -> None:
    # written at once (one commit on both backends): every key lands, and of one key given twice the
    # later write wins, as when written one by one
    await asyncio.gather(*(store.map_put(f"o{i}", f"a/{i % 3}", [f"n{i}", f"n{i}b"]) for i in range(60)),
                         store.map_put("o5", "a/2", ["again"]))
    assert await store.map_get("o7", "a/1") == ["n7", "n7b"]
    assert await store.map_get("o5", "a/2") == ["again"]
    assert await store.map_reverse("a/", "n59b") == "o59"
    assert await store.map_reverse("a/", "n5") is None


async def test_store_kv_and_audit(store, clock: Clock) -> None:
    assert await store.kv_get("mesh:x", "cursor") is None
    await store.kv_set("mesh:x", "cursor", {"id": 5, "t": [1, 2]})
    await store.kv_set("mesh:x", "b", "ü")
    await store.kv_set("other", "cursor", 1)
    assert await store.kv_get("mesh:x", "cursor") == {"id": 5, "t": [1, 2]}
    await store.kv_set("mesh:x", "cursor", 6)
    assert await store.kv_items("mesh:x") == {"b": "ü", "cursor": 6}
    await store.kv_delete("mesh:x", "cursor")
    assert await store.kv_items("mesh:x") == {"b": "ü"}
    shared = {"b": 1}
    with pytest.raises(TypeError):
        await store.kv_set("x", "y", {"a": [shared, object()]})
    await store.kv_set("x", "y", {"a": [shared, shared]})  # no stale circular-reference marker
    assert await store.kv_get("x", "y") == {"a": [{"b": 1}, {"b": 1}]}
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        await store.kv_set("x", "z", loop)

    await store.audit("admin", "dlq.retry", {"ids": [1]})
    clock.t += 1
    await store.audit("cli", "dlq.drop", {})
    rows = await store.audit_list()
    assert [(r["actor"], r["action"], r["detail"]) for r in rows] == [
        ("cli", "dlq.drop", {}), ("admin", "dlq.retry", {"ids": [1]})]
    assert rows[0]["ts"] == clock.t


async def test_store_purge_honours_ttls(store, clock: Clock) -> None:
    await store.accept("old", [])
    await store.map_put("old", "a/1", ["1"])
    await store.audit("x", "y", {})
    clock.t += 9 * 86400
    await store.accept("new", [])
    counts = await store.purge()
    assert counts == {"inbox": 0, "message_map": 0, "audit": 0, "dead_letters": 0, "trace": 0}  # 10-day inbox TTL
    clock.t += 2 * 86400
    counts = await store.purge()
    assert counts["inbox"] == 1
    assert not await store.seen("old") and await store.seen("new")
    assert await store.map_get("old", "a/1") == ["1"]
    clock.t += 30 * 86400
    assert (await store.purge())["message_map"] == 1
    # chunked: many expired rows go in several short writes, all of them
    for i in range(25):
        await store.map_put(f"o{i}", "a/1", ["x", "y"])
        await store.audit("x", "y", {})
    clock.t += 100 * 86400
    batches = store.batches
    counts = await store.purge(chunk=7)
    assert counts["message_map"] == 50 and counts["audit"] == 26  # + the first one, now 141 days old
    assert store.batches - batches >= 50 // 7 + 25 // 7
    assert await store.map_get("o3", "a/1") == []
    with pytest.raises(ValueError):
        type(store)("x.db", inbox_ttl=86400)


async def test_store_reopen_keeps_data(backend: Backend, clock: Clock) -> None:
    s = backend.make(clock=clock, purge_interval=0)
    await s.open()
    await s.accept("1", [item("a/1", mid="1")])
    await s.kv_set("ns", "k", [1])
    await s.map_put("1", "a/1", ["n1"])
    await s.accept("2", [item("a/1", mid="2")])
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(RuntimeError):
        await s.accept("3", [])

    s2 = backend.make(clock=clock, purge_interval=0)
    await s2.open()
    try:
        assert await s2.seen("1") and await s2.seen("2")
        assert [i.message["id"] for i in await s2.peek("a/1")] == ["1", "2"]
        assert await s2.kv_get("ns", "k") == [1]
        assert await s2.map_reverse("a/", "n1") == "1"
        assert not await s2.accept("1", [item("a/1")])
    finally:
        await s2.close()


async def test_store_sqlite_online_backup(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "gw.db"
    s = SqliteStore(path, clock=clock, purge_interval=0, synchronous="NORMAL")
    await s.open()
    await s.accept("1", [item("a/1", mid="1")])
    await s.backup(tmp_path / "backup" / "copy.db")
    await s.accept("2", [item("a/1", mid="2")])  # after the backup
    await s.close()
    b = SqliteStore(tmp_path / "backup" / "copy.db", clock=clock, purge_interval=0)
    await b.open()
    try:
        assert await b.seen("1") and not await b.seen("2")
        assert await b.outbox_count() == 1
    finally:
        await b.close()


async def test_store_sqlite_schema_version_and_refuses_newer(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    s = SqliteStore(path, purge_interval=0)
    await s.open()
    await s.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StartupError, match="newer"):
        await SqliteStore(path, purge_interval=0).open()


async def test_store_cancelled_caller_does_not_break_the_writer(store) -> None:
    t = asyncio.ensure_future(store.accept("c", [item(mid="c")]))
    await asyncio.sleep(0)
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    assert await store.accept("d", [item(mid="d")])
    # the cancelled write may or may not have been committed, but never half of it
    assert await store.seen("c") == (await store.outbox_count() == 2)


async def test_store_enqueue_without_ledger(store) -> None:
    ids = await store.enqueue([item("a/1", mid="n1"), item("a/1", mid="n2")])
    assert len(ids) == 2 and ids[0] < ids[1]
    assert [i.id for i in await store.peek("a/1")] == ids
    await store.complete_many(ids)
    assert await store.outbox_count() == 0


async def test_store_complete_many_per_item_from_many_lanes(store) -> None:
    # the engine removes each delivered item on its own (complete_many([id])), from many lanes at
    # once, right before its map_put: every removal lands, in few shared commits
    for lane in range(40):
        assert await store.accept(f"c{lane}", [item(f"tg/{lane}", mid=f"c{lane}-{k}") for k in range(10)])
    ids = [i.id for lane in range(40) for i in await store.peek(f"tg/{lane}", 10)]
    assert len(ids) == 400
    before = store.batches

    async def lane_worker(lane_ids: list[int]) -> None:
        for i in lane_ids:
            await asyncio.gather(store.complete_many([i]), store.map_put(f"o{i}", "tg/x", [str(i)]))

    await asyncio.gather(*(lane_worker(ids[k::40]) for k in range(40)))
    assert await store.outbox_count() == 0
    assert await store.map_get(f"o{ids[-1]}", "tg/x") == [str(ids[-1])]
    assert store.batches - before < 200  # 400 removals + 400 map writes shared commits
    await store.complete_many([ids[0]])  # an item already gone: nothing to do, no error
    await store.complete_many([])


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_store_implements_the_protocol(backend_name: str) -> None:
    if backend_name == "sqlite":
        cls: type = SqliteStore
    else:
        pytest.importorskip("asyncpg", reason="PostgreSQL tests skipped: asyncpg is not installed")
        from claudemesh_gateway.store.postgres import PostgresStore

        cls = PostgresStore
    names = [n for n, v in vars(Store).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert "accept" in names and "map_reverse" in names
    for name in names:
        impl = getattr(cls, name, None)
        assert impl is not None and inspect.iscoroutinefunction(impl), name
        want = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(Store, name)).parameters.values()]
        params = inspect.signature(impl).parameters.values()
        # extensions are allowed only as keyword-only parameters with a default
        got = [(p.name, p.kind, p.default) for p in params
               if not (p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
                       and p.name not in {w[0] for w in want})]
        assert got == want, name


async def test_store_sqlite_file_mode_and_unopenable_path(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "new" / "gw.db", purge_interval=0)
    await s.open()
    await s.close()
    assert (tmp_path / "new" / "gw.db").stat().st_mode & 0o777 == 0o600
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StartupError, match="cannot open the store"):
        await SqliteStore(tmp_path / "junk.db", purge_interval=0).open()


async def test_store_sqlite_migrates_a_v1_file_and_keeps_sent_parts(tmp_path: Path) -> None:
    from claudemesh_gateway.store.sqlite import _migrate_v1

    path = tmp_path / "v1.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    _migrate_v1(con)
    con.execute("PRAGMA user_version = 1")
    con.execute(
        "INSERT INTO outbox (lane, route, destination, message, options, progress, enqueued_at)"
        " VALUES ('a/1', 'r', '{}', '{\"id\": \"old\"}', '{}', 1, 5.0)"
    )
    con.close()
    s = SqliteStore(path, purge_interval=0)
    await s.open()
    try:
        head = await s.head("a/1")
        assert head is not None and head.message == {"id": "old"} and head.progress == 1
        assert await s.sent_parts(head.id) == []  # rows from v1 have no recorded ids
        await s.progress(head.id, 2, sent=[["n1"], ["n2", "n2b"]])
        assert await s.sent_parts(head.id) == [["n1"], ["n2", "n2b"]]
        await s.progress(head.id, 3)  # without ids: the recorded ones stay
        assert await s.sent_parts(head.id) == [["n1"], ["n2", "n2b"]]
        await s.dead_letter(head.id, "x")
        await s.dlq_retry()
        back = await s.head("a/1")
        assert back is not None and back.progress == 3
        assert await s.sent_parts(back.id) == [["n1"], ["n2", "n2b"]]  # travel with the item
        assert await s.sent_parts(999) == []
    finally:
        await s.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    con.close()
