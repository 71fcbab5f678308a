"""PostgreSQL store outage (the counterpart of the SQLite disk-full tests in
tests/delivery/test_defect17_14_disk_full.py): while the server is down every write and read is
refused with StoreUnavailable (nothing of it committed), ``write_problem`` names the cause, the log
gets one ERROR line however many writes are refused, and the store's probe notices the server is back
(one "writes again" line) even when nothing else writes. Runs on a private server of its own, stopped
and started with scripts/pg-test-server.sh pause/resume."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="PostgreSQL tests skipped: asyncpg is not installed")

from claudemesh_gateway.errors import StoreUnavailable
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.postgres import PostgresStore, is_unavailable

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pg-test-server.sh"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture
def private_pg(pg_dsn: str):  # pg_dsn: skipped with the rest of the PostgreSQL half
    started = _script("start")
    if started.returncode == 3:
        pytest.skip("PostgreSQL tests skipped: no server binaries for a private server")
    assert started.returncode == 0, started.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
    try:
        yield env["CLAUDEMESH_TEST_PG_DSN"], env["PG_TEST_DIR"]
    finally:
        _script("stop", env["PG_TEST_DIR"])


def _item(mid: str) -> OutboxItem:
    return OutboxItem(lane="l/1", route="r", destination={"gateway": "l", "chat": "1"}, message={"id": mid})


async def _until(cond, what: str, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not cond():  # noqa: ASYNC110 - the store's probe runs on its own timer
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_store_postgres_down_refuses_logs_once_and_probe_notices_recovery(private_pg, caplog) -> None:
    dsn, pg_dir = private_pg
    caplog.set_level(logging.INFO, logger="claudemesh_gateway")
    s = PostgresStore(dsn, purge_interval=0, connect_timeout=2, probe_interval=0.2)
    await s.open()
    try:
        assert await s.accept("before", [_item("before")])
        assert s.write_problem is None and await s.ping()
        assert (await asyncio.to_thread(_script, "pause", pg_dir)).returncode == 0  # the server goes down
        for i in range(30):
            with pytest.raises(StoreUnavailable):
                await s.accept(f"down{i}", [_item(f"down{i}")])
        problem = s.write_problem
        assert problem is not None and "unavailable" in problem and s.stats()["unwritable"] == 1
        assert dsn not in problem  # never the DSN (it may hold a password)
        with pytest.raises(StoreUnavailable):
            await s.outbox_count()  # reads too: no traceback per caller
        assert not await s.ping()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and not errors[0].exc_info, [r.getMessage() for r in errors]
        assert (await asyncio.to_thread(_script, "resume", pg_dir)).returncode == 0
        await _until(lambda: s.write_problem is None, "the probe's commit")  # nothing else writes meanwhile
        assert any("writes again" in r.getMessage() for r in caplog.records)
        assert s.stats()["outages"] == 1
        assert await s.accept("after", [_item("after")])
        assert not await s.seen("down0") and await s.outbox_count() == 2  # nothing refused was committed
    finally:
        await s.close()


def test_store_postgres_what_counts_as_unavailable() -> None:
    def pg_error(cls: type, state: str) -> Exception:
        e = cls("x")
        e.sqlstate = state  # asyncpg sets it from the server's answer
        return e

    assert is_unavailable(ConnectionRefusedError(111, "refused"))
    assert is_unavailable(TimeoutError())
    assert is_unavailable(pg_error(asyncpg.AdminShutdownError, "57P01"))
    assert is_unavailable(pg_error(asyncpg.DiskFullError, "53100"))
    assert is_unavailable(pg_error(asyncpg.ReadOnlySQLTransactionError, "25006"))
    assert is_unavailable(pg_error(asyncpg.TooManyConnectionsError, "53300"))
    assert is_unavailable(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    # a bad operation is that operation's failure, not an outage
    assert not is_unavailable(pg_error(asyncpg.UniqueViolationError, "23505"))
    assert not is_unavailable(pg_error(asyncpg.CharacterNotInRepertoireError, "22021"))
    assert not is_unavailable(ValueError("bad argument"))
