"""The store contract runs against both backends: ``store`` and ``backend`` are parametrised
over SQLite and PostgreSQL (the latter skipped, loudly, when no test server is configured)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway.store.sqlite import SqliteStore


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclasses.dataclass
class Backend:
    """How to open (again) a store of one backend on one database."""

    name: str
    make: Callable[..., Any]  # make(**store kwargs) -> an unopened store on the same database
    integrity_error: type[BaseException]
    scalar: Callable[[str], Awaitable[Any]]  # scalar(sql): one value, read straight from the database


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "state" / "gw.db"

        async def sqlite_scalar(sql: str) -> Any:
            con = sqlite3.connect(path)
            try:
                return con.execute(sql).fetchone()[0]
            finally:
                con.close()

        return Backend("sqlite", lambda **kw: SqliteStore(path, **kw), sqlite3.IntegrityError, sqlite_scalar)
    dsn = request.getfixturevalue("pg_schema_dsn")
    import asyncpg
    from claudemesh_gateway.store.postgres import PostgresStore

    async def pg_scalar(sql: str) -> Any:
        con = await asyncpg.connect(dsn)
        try:
            return await con.fetchval(sql)
        finally:
            await con.close()

    return Backend("postgres", lambda **kw: PostgresStore(dsn, **kw), asyncpg.IntegrityConstraintViolationError,
                   pg_scalar)


@pytest.fixture
async def store(backend: Backend, clock: Clock):
    s = backend.make(clock=clock, purge_interval=0)
    await s.open()
    yield s
    await s.close()
