"""Issue 17 item 14: a full disk. The REAL app (from a config file) whose SQLite commits fail with
SQLite's own "database or disk is full": every refused webhook is answered 503, ``/-/ready`` says
not ready (naming the cause) while the store cannot write, the log gets one error line instead of a
traceback per request, the recovery is noticed without any traffic (the store's probe) and logged,
and nothing is lost: what was accepted before is delivered once, what was refused is accepted when
the sender retries.

The fault is injected below SqliteStore: its connections are made with a ``sqlite3.Connection``
subclass whose COMMIT fails while the switch is on, exactly as a full disk fails the WAL append
(``tests/store`` has a real full filesystem variant where the machine allows a tmpfs mount).
"""

from __future__ import annotations

import logging
import sqlite3

import aiosqlite
import pytest

from .conftest import JWT_SECRET, WH_SECRET, admin_token, bearer, post_inbound, signed_post, wait_until

DISK = {"full": False}


class FullDiskConnection(sqlite3.Connection):
    def execute(self, sql, *args):  # type: ignore[override]
        if DISK["full"] and sql.strip().upper().startswith("COMMIT"):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


@pytest.fixture
def full_disk(monkeypatch):
    real = aiosqlite.connect

    def connect(database, **kw):
        return real(database, factory=FullDiskConnection, **kw)

    monkeypatch.setattr("claudemesh_gateway.store.sqlite.aiosqlite.connect", connect)
    DISK["full"] = False
    yield DISK
    DISK["full"] = False


def config(sink) -> dict:
    return {
        "admin": {"jwt_secret": JWT_SECRET},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.2, "poll_interval": 0.5},
        "routes": [{"name": "r", "binds": [
            {"gateway": "wh", "chat": "src", "direction": "in"},
            {"gateway": "wh", "chat": "out", "direction": "out", "options": {"url": sink.url("out")}},
        ]}],
    }


async def test_defect17_14_disk_full_not_ready_one_error_line_recovery_logged_nothing_lost(
        file_app, sink, full_disk, caplog):
    caplog.set_level(logging.DEBUG, logger="claudemesh_gateway")
    client, runtime, _ = await file_app(config(sink))
    runtime.store.probe_interval = 0.1  # the probe that notices the recovery, fast for the test
    for i in range(5):
        await post_inbound(client, "src", {"id": f"before{i}", "sender": "ann", "text": f"before {i}"})
    await wait_until(lambda: len(sink.texts("out")) == 5, 20, "the messages from before the outage")
    resp = await client.get("/-/ready")
    assert resp.status == 200, await resp.text()

    caplog.clear()
    full_disk["full"] = True
    refused = 0
    for i in range(200):
        body, headers = signed_post({"id": f"during{i}", "sender": "bo", "text": f"during {i}"})
        resp = await client.post("/gateways/wh/src", data=body, headers=headers)
        assert resp.status == 503, await resp.text()
        assert resp.headers.get("Retry-After") == "5"
        refused += 1
    # any other request that needs a write (here the admin API) is a 503 too, not a 500 + traceback
    resp = await client.post("/-/api/dlq/retry", json={}, headers=bearer(admin_token()))
    assert resp.status == 503 and resp.headers.get("Retry-After") == "5", await resp.text()
    resp = await client.get("/-/ready")
    ready = await resp.json()
    assert resp.status == 503 and not ready["ready"], ready
    assert any("store cannot write" in p and "database or disk is full" in p for p in ready["problems"]), ready
    assert runtime.store.write_problem == "database or disk is full"

    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in records]  # one line for 200 refused requests
    assert "cannot write" in errors[0].getMessage() and "database or disk is full" in errors[0].getMessage()
    assert len(records) <= 2, [r.getMessage() for r in records]

    caplog.clear()
    full_disk["full"] = False  # space freed; no request arrives: the store notices by itself
    await wait_until(lambda: runtime.store.write_problem is None, 10, "the probe's commit")
    resp = await client.get("/-/ready")
    assert resp.status == 200, await resp.text()
    recovered = [r.getMessage() for r in caplog.records if "writes again" in r.getMessage()]
    assert len(recovered) == 1 and "writes were refused" in recovered[0], recovered
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

    for i in range(refused):  # the sender retries what was refused
        await post_inbound(client, "src", {"id": f"during{i}", "sender": "bo", "text": f"during {i}"})
    want = [f"ann: before {i}" for i in range(5)] + [f"bo: during {i}" for i in range(refused)]
    await wait_until(lambda: len(sink.texts("out")) >= len(want), 30, "every message")
    assert sorted(sink.texts("out")) == sorted(want)  # each once: nothing lost, nothing doubled
    assert await runtime.store.dlq_count() == 0
    assert runtime.store.stats()["outages"] == 1
