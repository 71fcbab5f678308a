"""Shared fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture(scope="session")
def mesh_vectors() -> dict:
    return json.loads((VECTORS / "mesh-vectors.json").read_text())


@pytest.fixture(scope="session")
def topic_key_vectors() -> dict:
    return json.loads((VECTORS / "topic-key-vectors.json").read_text())


# -- PostgreSQL (the second store backend) -----------------------------------------------------------------------
# scripts/test.sh starts a throwaway server and exports CLAUDEMESH_TEST_PG_DSN; without it the
# PostgreSQL half of the suite is skipped, and the end of the run says so loudly.
PG_DSN_ENV = "CLAUDEMESH_TEST_PG_DSN"


def _pg_missing() -> str | None:
    if not os.environ.get(PG_DSN_ENV):
        return f"{PG_DSN_ENV} is not set (scripts/test.sh sets it when the PostgreSQL server binaries are installed)"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[test]')"
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    why = _pg_missing()
    if why is None:
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "postgres" in str(r.longrepr).lower()]
    if not skipped:
        return
    terminalreporter.write_sep("!", f"PostgreSQL HALF OF THE SUITE SKIPPED ({len(skipped)} tests): {why}",
                               red=True, bold=True)


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The throwaway server's DSN; skips the test (PostgreSQL half) when there is none."""
    why = _pg_missing()
    if why is not None:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    return os.environ[PG_DSN_ENV]


def _with_search_path(dsn: str, schema: str) -> str:
    # asyncpg passes unknown DSN query parameters on as server settings
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


@pytest.fixture
async def pg_schema_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A DSN whose search_path is a fresh, empty schema (dropped after the test): one database
    per test would cost a template copy each; a schema costs nothing."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await admin.close()
    try:
        yield _with_search_path(pg_dsn, schema)
    finally:
        admin = await asyncpg.connect(pg_dsn)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()
