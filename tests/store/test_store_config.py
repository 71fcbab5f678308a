"""``[store]``: backend choice, the DSN as a secret (inline or from a file), and ``check`` connecting
to PostgreSQL and reading the schema version."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import pytest
from claudemesh_gateway import cli
from claudemesh_gateway.app import open_store, store_where
from claudemesh_gateway.errors import ConfigError
from claudemesh_gateway.logconfig import RedactionFilter, register_secrets
from claudemesh_gateway.settings import iter_secrets, settings_from_dict
from claudemesh_gateway.store.sqlite import SqliteStore


def test_store_config_defaults_to_sqlite(tmp_path: Path) -> None:
    s = settings_from_dict({"server": {"state_dir": str(tmp_path)}})
    assert s.store.backend == "sqlite"
    assert isinstance(open_store(s), SqliteStore)
    assert store_where(s) == str(tmp_path / "gateway.sqlite3")


def test_store_config_problems_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='store: backend = "postgres" needs dsn or dsn_file'):
        settings_from_dict({"store": {"backend": "postgres"}})
    with pytest.raises(ConfigError, match="set either dsn or dsn_file, not both"):
        settings_from_dict({"store": {"backend": "postgres", "dsn": "postgresql://h/db", "dsn_file": "/x"}})
    with pytest.raises(ConfigError, match="the SQLite file is"):
        settings_from_dict({"store": {"dsn": "postgresql://h/db"}})
    with pytest.raises(ConfigError, match="must be a postgresql:// URL"):
        settings_from_dict({"store": {"backend": "postgres", "dsn": "mysql://h/db"}})
    with pytest.raises(ConfigError, match="store.backend"):
        settings_from_dict({"store": {"backend": "mongo"}})
    f = tmp_path / "dsn"
    f.write_text("postgresql://gw:pw@h/db\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group/others"):
        settings_from_dict({"store": {"backend": "postgres", "dsn_file": str(f)}})
    with pytest.raises(ConfigError, match="does not exist"):
        settings_from_dict({"store": {"backend": "postgres", "dsn_file": str(tmp_path / "none")}})


def test_store_dsn_is_a_secret_inline_or_from_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inline = settings_from_dict({"store": {"backend": "postgres", "dsn": "postgresql://gw:inl%21ne@db:5432/gw"}})
    assert "inl" not in repr(inline.store) and "inl" not in str(inline.model_dump())
    assert {"postgresql://gw:inl%21ne@db:5432/gw", "inl%21ne", "inl!ne"} <= set(iter_secrets(inline))
    assert store_where(inline) == "PostgreSQL db:5432/gw"
    f = tmp_path / "dsn"
    f.write_text("# the gateway's database\npostgresql://gw:fr0mfile@db/gw\n")
    f.chmod(0o600)
    filed = settings_from_dict({"store": {"backend": "postgres", "dsn_file": str(f)}})
    assert filed.store.dsn_value() == "postgresql://gw:fr0mfile@db/gw"
    secrets = set(iter_secrets(filed))
    assert {"postgresql://gw:fr0mfile@db/gw", "fr0mfile"} <= secrets
    assert repr(open_store(filed)) == "PostgresStore(db/gw)"
    # the log filter redacts the password wherever it shows up
    register_secrets(secrets)
    logger = logging.getLogger("test.store.dsn")
    logger.addFilter(RedactionFilter())
    with caplog.at_level(logging.INFO, "test.store.dsn"):
        logger.info("connecting with %s (password %s)", filed.store.dsn_value(), "fr0mfile")
    assert "fr0mfile" not in caplog.text


def _write_config(tmp_path: Path, dsn: str) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path}"\n[store]\nbackend = "postgres"\ndsn = "{dsn}"\n')
    return cfg


async def _schema(dsn: str, sql: str) -> None:
    import asyncpg

    c = await asyncpg.connect(dsn)
    try:
        await c.execute(sql)
    finally:
        await c.close()


def test_check_connects_to_postgres_and_reads_the_schema_version(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from claudemesh_gateway.store.postgres import SCHEMA_VERSION, PostgresStore

    schema = f"t_{uuid.uuid4().hex[:16]}"
    asyncio.run(_schema(pg_dsn, f'CREATE SCHEMA "{schema}"'))
    try:
        dsn = f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}search_path={schema}"
        cfg = _write_config(tmp_path, dsn)
        assert cli.main(["-c", str(cfg), "check"]) == 0
        out, err = capsys.readouterr()
        assert f"schema version 0, `run` migrates it to {SCHEMA_VERSION}" in err and out.startswith("ok:")

        async def migrate() -> None:
            async with PostgresStore(dsn, purge_interval=0):
                pass
        asyncio.run(migrate())
        assert cli.main(["-c", str(cfg), "check"]) == 0
        assert f"schema version {SCHEMA_VERSION} (current)" in capsys.readouterr().err

        asyncio.run(_schema(dsn, f"UPDATE claudemesh_schema SET version = {SCHEMA_VERSION + 1}"))
        assert cli.main(["-c", str(cfg), "check"]) == 2
        assert "newer than this gateway understands" in capsys.readouterr().err
    finally:
        asyncio.run(_schema(pg_dsn, f'DROP SCHEMA "{schema}" CASCADE'))


def test_check_reports_an_unreachable_database_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("asyncpg", reason="PostgreSQL tests skipped: asyncpg is not installed")
    cfg = _write_config(tmp_path, "postgresql://gw:t0ps3cret@127.0.0.1:1/gw")  # nothing listens on port 1
    assert cli.main(["-c", str(cfg), "check"]) == 2
    out, err = capsys.readouterr()
    assert "store.dsn: cannot connect to PostgreSQL at 127.0.0.1:1/gw" in err
    assert "t0ps3cret" not in out + err


def test_dlq_cli_works_on_the_shared_database(pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`claudemesh-gateway dlq` from any replica's host: it opens the PostgreSQL store, not a file."""
    from claudemesh_gateway.store.base import OutboxItem
    from claudemesh_gateway.store.postgres import PostgresStore

    schema = f"t_{uuid.uuid4().hex[:16]}"
    asyncio.run(_schema(pg_dsn, f'CREATE SCHEMA "{schema}"'))
    dsn = f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}search_path={schema}"

    async def dead_letter() -> int:
        async with PostgresStore(dsn, purge_interval=0) as s:
            item = OutboxItem(lane="tg/1", route="r", destination={"gateway": "tg", "chat": "1"}, message={"id": "m1"})
            (item_id,) = await s.enqueue([item])
            await s.dead_letter(item_id, "chat not found")
            return item_id

    async def outbox() -> tuple[int, int, list[str]]:
        async with PostgresStore(dsn, purge_interval=0) as s:
            return await s.outbox_count(), await s.dlq_count(), [a["action"] for a in await s.audit_list()]

    try:
        item_id = asyncio.run(dead_letter())
        cfg = _write_config(tmp_path, dsn)
        assert cli.main(["-c", str(cfg), "dlq", "list"]) == 0
        listed = json.loads(capsys.readouterr().out.splitlines()[0])
        assert listed["id"] == item_id and listed["reason"] == "chat not found"
        assert cli.main(["-c", str(cfg), "dlq", "retry", "--all"]) == 0
        assert "moved 1 dead letter(s)" in capsys.readouterr().out
        assert asyncio.run(outbox()) == (1, 0, ["dlq_retry"])
    finally:
        asyncio.run(_schema(pg_dsn, f'DROP SCHEMA "{schema}" CASCADE'))
