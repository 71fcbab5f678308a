"""Issue 17 item 5 (and issue 16 "File modes"): ``SqliteStore.backup()`` wrote a 0644 copy holding the
session secret, and the state directory was created 0755 (by ``open_store`` and by the embedded dev
broker's ``var/devbroker``) before the store would have created it 0700. Now every file holding state
or keys is 0600 and every directory the gateway creates for them 0700, whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from claudemesh_gateway.app import open_store
from claudemesh_gateway.devbroker import DevBroker
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.mesh.state import JsonFileKV, load_session_identity
from claudemesh_gateway.mesh.tools import keygen
from claudemesh_gateway.settings import settings_from_dict
from claudemesh_gateway.store.sqlite import SqliteStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022():
    old = os.umask(0o022)  # the usual default: without care, files 0644 and directories 0755
    yield
    os.umask(old)


async def test_defect17_5_backup_is_0600_in_a_0700_directory(tmp_path):
    store = SqliteStore(tmp_path / "state" / "gateway.sqlite3")
    await store.open()
    try:
        await load_session_identity(store, "dev", KeyPair.generate().public_hex)
        await store.backup(tmp_path / "backups" / "nightly" / "copy.sqlite3")
        existing = tmp_path / "old.sqlite3"
        existing.write_bytes(b"")
        existing.chmod(0o644)
        await store.backup(existing)
    finally:
        await store.close()
    copy = tmp_path / "backups" / "nightly" / "copy.sqlite3"
    assert mode(copy) == 0o600 and mode(existing) == 0o600
    assert mode(tmp_path / "backups") == 0o700 and mode(tmp_path / "backups" / "nightly") == 0o700
    assert b"session_secret" in copy.read_bytes()  # it does hold the secret


async def test_defect17_5_store_files_and_state_directories(tmp_path):
    settings = settings_from_dict({"server": {"state_dir": str(tmp_path / "var" / "gw")}})
    store = open_store(settings)  # creates the state directory, before the store opens
    assert mode(tmp_path / "var") == 0o700 and mode(tmp_path / "var" / "gw") == 0o700
    await store.open()
    try:
        await load_session_identity(store, "dev", KeyPair.generate().public_hex)
        path = settings.server.store
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            assert mode(p) == 0o600, p
    finally:
        await store.close()


async def test_defect17_5_a_readable_store_from_before_is_tightened(tmp_path, caplog):
    path = tmp_path / "gateway.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    path.chmod(0o644)
    caplog.set_level(logging.WARNING)
    store = SqliteStore(path)
    await store.open()
    await store.close()
    assert mode(path) == 0o600
    assert any("now 0600" in r.getMessage() for r in caplog.records)


async def test_defect17_5_dev_broker_state_directory_is_0700(tmp_path):
    broker = DevBroker(tmp_path / "var" / "devbroker")
    await broker.start()
    try:
        assert mode(tmp_path / "var") == 0o700 and mode(tmp_path / "var" / "devbroker") == 0o700
        for f in (tmp_path / "var" / "devbroker").iterdir():
            if f.is_file() and f.suffix == ".json":
                assert mode(f) == 0o600, f
    finally:
        await broker.stop()


async def test_defect17_5_key_file_and_cli_kv_file(tmp_path):
    out = keygen(tmp_path / "keys" / "member.key")
    key = Path(out["secret_key_file"])
    assert mode(key) == 0o600 and mode(tmp_path / "keys") == 0o700
    kv = JsonFileKV(tmp_path / "cli" / "state.json")
    await load_session_identity(kv, "dev", KeyPair.generate().public_hex)
    assert mode(tmp_path / "cli" / "state.json") == 0o600 and mode(tmp_path / "cli") == 0o700
