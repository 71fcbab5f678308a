"""Retention pruning, per table: old rows go, what dedup, replies, edits and operators still need stays.

Time is a virtual clock handed to the store; nothing here measures how long anything takes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from claudemesh_gateway.errors import ConfigError
from claudemesh_gateway.settings import settings_from_dict
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.retention import DAY, RetentionConfig
from claudemesh_gateway.store.sqlite import SCHEMA_VERSION, SqliteStore


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def item(lane: str = "tg/1", mid: str = "m") -> OutboxItem:
    gw, _, chat = lane.partition("/")
    return OutboxItem(lane=lane, route="r", destination={"gateway": gw, "chat": chat, "thread": None},
                      message={"id": mid, "text": "hi"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def open_store(path: Path, clock: Clock, **retention) -> SqliteStore:
    s = SqliteStore(path, clock=clock, retention=RetentionConfig(interval_s=0, **retention))
    await s.open()
    return s


@pytest.fixture
async def store(tmp_path: Path, clock: Clock):
    s = await open_store(tmp_path / "gw.db", clock, batch=7)
    yield s
    await s.close()


async def test_retention_inbox_keeps_the_dedup_window(store: SqliteStore, clock: Clock) -> None:
    await store.accept("old", [])
    clock.t += 9.5 * DAY
    await store.accept("recent", [])
    clock.t += 1 * DAY  # "old" is 10.5 days old, "recent" 1 day
    assert (await store.purge())["inbox"] == 1
    assert not await store.seen("old") and await store.seen("recent")
    assert not await store.accept("recent", [item(mid="again")])  # a redelivery inside the window: still a duplicate
    assert await store.outbox_count() == 0
    assert await store.accept("old", [])  # outside it: the ledger no longer knows it


async def test_retention_inbox_window_is_at_least_eight_days() -> None:
    with pytest.raises(ValueError):
        RetentionConfig(inbox_days=7)
    with pytest.raises(ValueError):
        SqliteStore("x.db", inbox_ttl=7 * DAY)
    with pytest.raises(ConfigError, match="retention.inbox_days"):
        settings_from_dict({"retention": {"inbox_days": 1}})
    with pytest.raises(ConfigError, match="retention.keep_forever: unknown key"):
        settings_from_dict({"retention": {"keep_forever": True}})
    cfg = settings_from_dict({"retention": {"inbox_days": 14, "dead_letter_max": 10}}).retention
    assert (cfg.inbox_days, cfg.dead_letter_max, cfg.reply_window_days) == (14, 10, 30)


async def test_retention_message_map_keeps_rows_a_reply_or_edit_still_uses(store: SqliteStore, clock: Clock) -> None:
    await store.map_put("quiet", "tg/1", ["10"])
    await store.map_put("quiet", "sl/C1", ["1.1"])
    await store.map_put("thread", "tg/1", ["20"])
    await store.map_put("thread", "sl/C1", ["2.1", "2.2"])
    clock.t += 25 * DAY
    await store.map_touch("thread")  # a reply (or an edit) to "thread" was resolved through its rows
    clock.t += 10 * DAY  # "quiet" is 35 days unused; "thread" was used 10 days ago
    await store.map_put("fresh", "tg/1", ["30"])
    assert (await store.purge())["message_map"] == 2
    assert await store.map_get("quiet", "tg/1") == [] and await store.map_get("quiet", "sl/C1") == []
    assert await store.map_reverse("tg/", "10") is None
    assert await store.map_get("thread", "sl/C1") == ["2.1", "2.2"]  # every lane and part of it kept
    assert await store.map_reverse("tg/", "20") == "thread"
    assert await store.map_get("fresh", "tg/1") == ["30"]
    clock.t += 21 * DAY  # now "thread" is 31 days unused too
    assert (await store.purge())["message_map"] == 3
    assert await store.map_get("thread", "tg/1") == [] and await store.map_get("fresh", "tg/1") == ["30"]


async def test_retention_audit_keeps_its_window(store: SqliteStore, clock: Clock) -> None:
    await store.audit("admin", "dlq.drop", {"n": 1})
    clock.t += 60 * DAY
    await store.audit("admin", "config.reload", {})
    clock.t += 31 * DAY
    assert (await store.purge())["audit"] == 1
    assert [r["action"] for r in await store.audit_list()] == ["config.reload"]


async def test_retention_dead_letters_by_age_and_cap_and_the_outbox_is_never_pruned(
        tmp_path: Path, clock: Clock) -> None:
    s = await open_store(tmp_path / "gw.db", clock, batch=3, dead_letter_max=4)
    try:
        for i in range(3):  # dead-lettered on day 0
            await s.accept(f"old{i}", [item(mid=f"old{i}")])
            await s.dead_letter((await s.head("tg/1")).id, "gone")
        await s.accept("stuck", [item("sl/C1", mid="stuck")])  # stays queued (undelivered) the whole time
        clock.t += 20 * DAY
        for i in range(6):  # dead-lettered on day 20, one second apart
            clock.t += 1
            await s.accept(f"new{i}", [item(mid=f"new{i}")])
            await s.dead_letter((await s.head("tg/1")).id, "gone")
        clock.t += 11 * DAY  # day 31: the first three are past 30 days; six remain, cap 4
        counts = await s.purge()
        assert counts["dead_letters"] == 3 + 2
        kept = await s.dlq_list()
        assert sorted(d.item.message["id"] for d in kept) == ["new2", "new3", "new4", "new5"]  # the newest 4
        assert await s.dlq_count() == 4
        clock.t += 365 * DAY
        assert (await s.purge())["dead_letters"] == 4
        head = await s.head("sl/C1")  # undelivered outbox rows leave only by delivery or dead-lettering
        assert head is not None and head.message["id"] == "stuck"
    finally:
        await s.close()


async def test_retention_prunes_in_small_writes_between_other_writers(tmp_path: Path, clock: Clock) -> None:
    s = await open_store(tmp_path / "gw.db", clock, batch=50)
    try:
        await asyncio.gather(*(s.accept(f"id{i}", []) for i in range(1000)))
        clock.t += 11 * DAY
        batches = s.batches
        pass_ = asyncio.create_task(s.purge())
        await asyncio.sleep(0)  # the pass has queued its first delete
        assert await s.accept("live", [item(mid="live")])  # commits between two prune batches
        assert not pass_.done()  # 1,000 rows in writes of 50: the pass is far from finished
        counts = await pass_
        assert counts["inbox"] == 1000 and await s.seen("live")
        assert s.batches - batches >= 1000 // 50  # every delete was its own short write
        assert s.stats()["pruned_inbox"] == 1000 and s.stats()["prune_passes"] == 1
    finally:
        await s.close()


async def test_retention_pass_gives_the_space_back(tmp_path: Path, clock: Clock) -> None:
    s = await open_store(tmp_path / "gw.db", clock, batch=5000)
    try:
        rows = [(f"origin-{i:06d}", "tg/-1001234567890", [f"{i:010d}"]) for i in range(20_000)]
        await asyncio.gather(*(s.map_put(*r) for r in rows))
        await s.checkpoint()
        full = await s.file_stats()
        clock.t += 31 * DAY
        assert (await s.purge())["message_map"] == 20_000
        after = await s.file_stats()
        assert s.stats()["vacuumed_pages"] > 0
        assert after["free_pages"] == 0 and after["pages"] < full["pages"] // 4
        assert after["file_bytes"] < full["file_bytes"] // 4 and after["wal_bytes"] == 0
    finally:
        await s.close()
    con = sqlite3.connect(tmp_path / "gw.db")
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    con.close()


async def test_retention_migration_v4_keeps_map_rows_and_converts_the_file(tmp_path: Path, clock: Clock) -> None:
    from claudemesh_gateway.store.sqlite import _migrate_v1, _migrate_v2, _migrate_v3

    path = tmp_path / "v3.db"  # a store of the version before: the trace tables (v3), no last_used yet
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    _migrate_v1(con)
    _migrate_v2(con)
    _migrate_v3(con)
    con.execute("PRAGMA user_version = 3")
    con.execute("INSERT INTO message_map VALUES ('old', 'tg/1', 0, '5', ?)", (clock.t - 40 * DAY,))
    con.execute("INSERT INTO message_map VALUES ('young', 'tg/1', 0, '6', ?)", (clock.t - 5 * DAY,))
    con.execute("INSERT INTO trace_messages (message_id, first_at, last_at, keys) VALUES ('t', ?, ?, '')",
                (clock.t - 1 * DAY, clock.t - 1 * DAY))
    con.close()
    s = await open_store(path, clock)
    try:
        assert await s.map_reverse("tg/", "5") == "old"  # nothing lost by the migration
        counts = await s.purge()
        assert counts["message_map"] == 1  # the age of a v3 row is its creation
        assert counts["trace"] == 0 and await s.trace_get("t") is not None  # the v3 trace is kept
        assert await s.map_get("young", "tg/1") == ["6"] and await s.map_get("old", "tg/1") == []
    finally:
        await s.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'message_map'")}
    assert "message_map_last_used" in indexes and "message_map_created" not in indexes
    con.close()


async def test_retention_runs_in_the_background(tmp_path: Path, clock: Clock) -> None:
    s = await open_store(tmp_path / "gw.db", clock)
    await s.accept("old", [])
    await s.close()
    clock.t += 11 * DAY
    s = SqliteStore(tmp_path / "gw.db", clock=clock, retention=RetentionConfig(interval_s=3600))
    await s.open()  # the first pass runs at start, then every interval_s
    try:
        for _ in range(500):
            if s.stats().get("pruned_inbox"):
                break
            await asyncio.sleep(0.01)
        assert s.stats()["pruned_inbox"] == 1 and not await s.seen("old")
    finally:
        await s.close()


async def test_retention_refuses_unknown_tables(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="kv"):
        await store.prune("kv", 0, 10)
    with pytest.raises(ValueError, match="outbox"):
        await store.prune_excess("outbox", 0, 10)


async def test_retention_the_app_store_gets_the_retention_table(tmp_path: Path) -> None:
    from claudemesh_gateway.app import open_store

    settings = settings_from_dict({"server": {"store_path": str(tmp_path / "s" / "gw.db")},
                                   "retention": {"reply_window_days": 7, "dead_letter_max": 0}})
    s = open_store(settings)
    assert s.retention == settings.retention and s.retention.reply_window_days == 7
    tool = open_store(settings, prune=False)  # the dlq command: no background pruning of its own
    assert tool.retention.interval_s == 0 and tool.retention.reply_window_days == 7


async def test_retention_trace_window_and_its_trace_alias(tmp_path: Path) -> None:
    from claudemesh_gateway.app import open_store

    assert RetentionConfig().cutoffs(100 * DAY)["trace"] == 93 * DAY  # 7 days by default
    cfg = settings_from_dict({"retention": {"trace_days": 3}})
    assert cfg.retention.trace_days == 3
    alias = settings_from_dict({"server": {"store_path": str(tmp_path / "gw.db")}, "trace": {"retention_days": 2}})
    assert alias.retention.trace_days == 2  # [trace] retention_days still sets the trace window
    assert open_store(alias).retention.trace_days == 2
    same = settings_from_dict({"trace": {"retention_days": 5}, "retention": {"trace_days": 5}})
    assert same.retention.trace_days == 5
    with pytest.raises(ConfigError, match="disagree"):
        settings_from_dict({"trace": {"retention_days": 5}, "retention": {"trace_days": 6}})
    with pytest.raises(ConfigError, match="trace_days"):
        settings_from_dict({"retention": {"trace_days": 0}})
