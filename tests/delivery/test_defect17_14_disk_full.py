"""Issue 17 item 14, the delivery side of a full disk: SqliteStore whose commits fail with SQLite's
"database or disk is full" (injected below the store, in the sqlite3 connection). The item whose
removal failed is kept and never sent again, the lanes send nothing while the store cannot write
(a send could not be recorded), no traceback is logged per attempt, and once the store's probe
commits again delivery goes on where it stopped: every item exactly once.

Plus the store alone on a real full filesystem (a small tmpfs) where the machine allows mounting one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
from pathlib import Path

import aiosqlite
import pytest
from claudemesh_gateway.errors import StoreUnavailable
from claudemesh_gateway.store.sqlite import SqliteStore

DISK = {"full": False}


class FullDiskConnection(sqlite3.Connection):
    def execute(self, sql, *args):  # type: ignore[override]
        if DISK["full"] and sql.strip().upper().startswith("COMMIT"):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


@pytest.fixture
async def full_disk_store(tmp_path, vclock, monkeypatch):
    real = aiosqlite.connect
    monkeypatch.setattr("claudemesh_gateway.store.sqlite.aiosqlite.connect",
                        lambda database, **kw: real(database, factory=FullDiskConnection, **kw))
    DISK["full"] = False
    s = SqliteStore(tmp_path / "full.db", clock=vclock.time, purge_interval=0, synchronous="NORMAL",
                    probe_interval=0.05)
    await s.open()
    yield s
    DISK["full"] = False
    await s.close()


async def test_defect17_14_engine_pauses_keeps_the_unrecorded_item_and_resumes(
        full_disk_store, transport, make_engine, vclock, dh, caplog) -> None:
    store = full_disk_store
    caplog.set_level(logging.DEBUG, logger="claudemesh_gateway")
    lane = "webhook/out"
    for i in range(10):
        assert await store.accept(f"in:a{i}", [dh.make_item(lane, f"a{i}")])

    def on_send(out):
        if out.message.id == "a3":
            DISK["full"] = True  # the disk fills up while a3 is being sent: its removal cannot commit

    transport.on_send = on_send
    eng = make_engine(st=store, backoff_base=1.0)
    await eng.start()
    await dh.until(lambda: store.write_problem is not None, what="the outage")
    await dh.until(lambda: eng.stats()["active_lanes"] == 0, what="the lane parked")
    for _ in range(5):  # the lane looks again every backoff_base: it still sends nothing
        vclock.advance(1.0)
        await asyncio.sleep(0.02)
    assert transport.ids(lane) == ["a0", "a1", "a2", "a3"]
    assert (await store.peek(lane, 20))[0].message["id"] == "a3"  # a3 is still queued...
    assert [r for r in caplog.records if r.exc_info] == []
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1

    DISK["full"] = False  # space freed: the store's probe notices, the lane goes on
    await dh.until(lambda: store.write_problem is None, what="the probe's commit")
    await dh.run_virtual(vclock, lambda: len(transport.sent) == 10, what="the rest", limit=50.0)
    assert transport.ids(lane) == [f"a{i}" for i in range(10)]  # ...but never sent again
    await dh.until(lambda: eng.stats()["active_lanes"] == 0, what="lane idle")
    assert await store.outbox_count() == 0
    assert any("writes again" in r.getMessage() for r in caplog.records)
    assert [r for r in caplog.records if r.exc_info] == []


async def test_defect17_14_store_refuses_with_store_unavailable_and_recovers(full_disk_store) -> None:
    store = full_disk_store
    DISK["full"] = True
    for i in range(50):
        with pytest.raises(StoreUnavailable, match="database or disk is full"):
            await store.accept(f"x{i}", [])
    assert store.write_problem == "database or disk is full"
    assert store.stats()["unwritable"] == 1
    DISK["full"] = False
    assert await store.accept("after", [])  # the next commit ends the outage
    assert store.write_problem is None and store.stats()["outages"] == 1
    assert not await store.seen("x0")  # nothing of a refused write was committed


@contextlib.contextmanager
def _small_tmpfs(where: Path, size: str):
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=False,
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_defect17_14_real_full_filesystem(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="claudemesh_gateway")
    with _small_tmpfs(tmp_path / "small", "1m") as mnt:
        store = SqliteStore(mnt / "gw.db", purge_interval=0, probe_interval=0.05)
        await store.open()
        filler = mnt / "filler"
        try:
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:  # take every free byte
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * 4096)
            finally:
                os.close(fd)
            big = "x" * 3000
            refused = 0
            for i in range(300):  # the WAL needs room: sooner or later a commit fails
                try:
                    await store.kv_set("t", f"k{i}", big)
                except StoreUnavailable:
                    refused += 1
            assert refused > 0 and store.write_problem is not None, "the filesystem never filled"
            filler.unlink()  # space freed: the probe ends the outage
            async with asyncio.timeout(10):
                while store.write_problem is not None:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await store.kv_set("t", "after", "ok")
            assert await store.kv_get("t", "after") == "ok"
        finally:
            filler.unlink(missing_ok=True)
            await store.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 2 and not any(r.exc_info for r in errors), [r.getMessage() for r in errors]
    assert any("writes again" in r.getMessage() for r in caplog.records)
