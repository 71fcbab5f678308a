"""Issue 17 item 4: at ``[log] level = "DEBUG"`` the session secret key was in the log, because
aiosqlite's own DEBUG logger prints every SQL call with its arguments (the ``kv_set`` of the session
identity among them, and queued messages with full phone numbers).

Now third-party loggers are capped at ``[log] library_level`` (INFO) whatever ``level`` says, and the
session secret is registered with the redaction filter the moment it is loaded or minted, so even
with the cap lifted (``library_level = "DEBUG"``) it is masked."""

from __future__ import annotations

import io
import logging

import pytest
from claudemesh_gateway.logconfig import configure_logging
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.mesh.state import load_session_identity
from claudemesh_gateway.settings import settings_from_dict
from claudemesh_gateway.store.sqlite import SqliteStore

PHONE = "+15557654321"
LIBRARIES = ("aiosqlite", "asyncio", "websockets", "aiohttp", "telegram", "slack_sdk", "twilio")


@pytest.fixture
def captured_log():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARIES}
    buf = io.StringIO()

    def install(**log: str) -> io.StringIO:
        configure_logging(settings_from_dict({"log": log}))
        for h in logging.getLogger().handlers:
            h.setStream(buf)
        return buf

    yield install
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)


async def _store_session_and_a_number(tmp_path) -> str:
    store = SqliteStore(tmp_path / "gw.sqlite3")
    await store.open()
    try:
        member = KeyPair.generate().public_hex
        ident = await load_session_identity(store, "dev", member)  # mints and kv_sets the secret
        await store.kv_set("whatsapp", "window:whatsapp:" + PHONE, {"to": "whatsapp:" + PHONE})
        again = await load_session_identity(store, "dev", member)  # and loads it back
        assert again.keypair.secret_hex == ident.keypair.secret_hex
        return ident.keypair.secret_hex
    finally:
        await store.close()


async def test_defect17_4_debug_level_logs_no_session_secret_and_no_sql_arguments(captured_log, tmp_path):
    buf = captured_log(level="DEBUG")
    logging.getLogger("claudemesh_gateway.defect17").debug("our own DEBUG lines still flow")
    secret = await _store_session_and_a_number(tmp_path)
    text = buf.getvalue()
    assert "our own DEBUG lines still flow" in text
    assert secret[:64] not in text and secret not in text
    assert PHONE not in text
    assert "aiosqlite" not in text and "_op_kv_set" not in text  # aiosqlite's per-call DEBUG lines are capped
    for name in LIBRARIES:
        assert logging.getLogger(name).getEffectiveLevel() == logging.INFO, name
    assert logging.getLogger("claudemesh_gateway.store").getEffectiveLevel() == logging.DEBUG


async def test_defect17_4_lifting_the_cap_still_masks_the_session_secret(captured_log, tmp_path):
    buf = captured_log(level="DEBUG", library_level="DEBUG")
    secret = await _store_session_and_a_number(tmp_path)
    text = buf.getvalue()
    assert "aiosqlite" in text and "_op_kv_set" in text  # the cap is lifted: SQL calls are logged
    assert secret[:64] not in text and secret not in text  # but the secret is masked
    assert "***" in text


def test_defect17_4_library_level_follows_a_stricter_level(captured_log):
    captured_log(level="WARNING")
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.WARNING
    captured_log(level="INFO", library_level="ERROR")
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("claudemesh_gateway").getEffectiveLevel() == logging.INFO
