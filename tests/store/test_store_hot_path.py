"""The store's per-message path: ``accept_mapped`` (ledger + outbox + origin map in one operation;
both backends, the ``store`` fixture of conftest.py) and ``seen`` answering from the last commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.sqlite import SqliteStore


def item(lane: str, message: dict) -> OutboxItem:
    gw, _, chat = lane.partition("/")
    return OutboxItem(lane=lane, route="r", destination={"gateway": gw, "chat": chat, "thread": None},
                      message=message, options={"kind": "relay"})


async def test_accept_mapped_writes_the_map_with_a_new_id_only(store) -> None:
    shared = {"id": "mesh:m:1", "text": "hi"}  # one message dict for both destinations
    assert await store.accept_mapped("mesh:m:1", [item("tg/1", shared), item("sl/C1", shared)],
                                     [("mesh/m:#ops", ["row-1"]), ("mesh/m:#ops/t", ["row-1"])])
    assert await store.seen("mesh:m:1")
    assert await store.map_get("mesh:m:1", "mesh/m:#ops") == ["row-1"]
    assert await store.map_get("mesh:m:1", "mesh/m:#ops/t") == ["row-1"]
    assert await store.map_reverse("mesh/m:#ops", "row-1") == "mesh:m:1"
    heads = [await store.head("tg/1"), await store.head("sl/C1")]
    assert [h.message for h in heads if h is not None] == [shared, shared]
    # a duplicate writes nothing: neither outbox rows nor a new map entry
    assert not await store.accept_mapped("mesh:m:1", [item("tg/1", shared)], [("mesh/m:#ops", ["other"])])
    assert await store.map_get("mesh:m:1", "mesh/m:#ops") == ["row-1"]
    assert await store.outbox_count() == 2


async def test_accept_mapped_replaces_a_map_left_from_an_expired_ledger_entry(store) -> None:
    # the ledger forgets ids after inbox_ttl, the map keeps them longer: a re-accepted id's map is rewritten
    await store.map_put("mesh:m:9", "mesh/m:#ops", ["old-a", "old-b"])
    assert await store.accept_mapped("mesh:m:9", [], [("mesh/m:#ops", ["row-9"])])
    assert await store.map_get("mesh:m:9", "mesh/m:#ops") == ["row-9"]


async def test_accept_mapped_many_at_once_in_shared_commits(store) -> None:
    # concurrent messages (and duplicates among them) batched together: each new id gets its map,
    # a duplicate neither rows nor a map
    res = await asyncio.gather(*(store.accept_mapped(f"m{i % 40}", [item("tg/1", {"id": f"m{i}"})],
                                                     [("wh/in", [f"n{i}"])]) for i in range(60)))
    assert res == [True] * 40 + [False] * 20
    assert await store.outbox_count() == 40
    assert [await store.map_get(f"m{i}", "wh/in") for i in (0, 39)] == [["n0"], ["n39"]]
    assert await store.map_reverse("wh/", "n45") is None  # the duplicate's id was not mapped
    assert store.batches < 30


async def test_seen_sees_every_commit_of_concurrent_submitters(store) -> None:
    async def submit(i: int) -> bool:
        if await store.seen(f"id-{i % 50}"):
            return False
        return await store.accept(f"id-{i % 50}", [item("tg/1", {"id": f"id-{i}"})])

    first = await asyncio.gather(*(submit(i) for i in range(50)))
    assert all(first)
    assert not any(await asyncio.gather(*(submit(i) for i in range(50, 100))))  # all known now
    assert await store.outbox_count() == 50


async def test_seen_after_close_is_refused(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "gw.db", purge_interval=0)
    await s.open()
    await s.accept("x", [])
    await s.close()
    with pytest.raises(RuntimeError, match="not open"):
        await s.seen("x")


async def test_seen_holds_no_snapshot_that_would_block_a_checkpoint(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "gw.db", purge_interval=0)
    await s.open()
    try:
        for i in range(20):
            await s.accept(f"id-{i}", [item("tg/1", {"id": f"id-{i}"})])
        assert all([await s.seen(f"id-{i}") for i in range(20)])  # hits leave a row unread
        await s.accept("late", [])
        assert await s.seen("late")  # a later commit is visible to the next probe
        await s.checkpoint()  # TRUNCATE: only possible when no reader holds an old snapshot
        assert (tmp_path / "gw.db-wal").stat().st_size == 0
    finally:
        await s.close()


async def test_accept_many_keeps_the_order_and_answers_each_message(store) -> None:
    """A topic poll's rows in one round: outbox order as given, False for an id seen before (also one
    given twice), each origin map written, and a write that fails fails alone."""
    assert await store.accept("mesh:m:5", [])  # seen before the batch
    ids = [f"mesh:m:{i}" for i in range(12)] + ["mesh:m:7"]
    entries = [(mid, [item("tg/1", {"id": mid, "n": n})], [("mesh/m:#ops", [f"row-{n}"])])
               for n, mid in enumerate(ids)]
    broken = OutboxItem(lane=None, route="r", destination={}, message={"id": "mesh:m:3"}, options={})  # type: ignore[arg-type]
    entries[3] = ("mesh:m:3", [broken], [("mesh/m:#ops", ["row-3"])])  # outbox.lane is NOT NULL
    outcomes = await store.accept_many(entries)
    assert isinstance(outcomes[3], Exception)
    assert [o for n, o in enumerate(outcomes) if n != 3] == [True] * 4 + [False] + [True] * 6 + [False]
    assert not await store.seen("mesh:m:3")  # rolled back alone
    assert await store.map_get("mesh:m:3", "mesh/m:#ops") == []
    expected = [f"mesh:m:{i}" for i in range(12) if i not in (3, 5)]
    assert [h.message["id"] for h in await store.peek("tg/1", 50)] == expected
    assert await store.map_reverse("mesh/m:#ops", "row-11") == "mesh:m:11"
    assert await store.map_get("mesh:m:7", "mesh/m:#ops") == ["row-7"]  # not the second entry's
    assert await store.accept_many([]) == []
