"""Issue 15, done-when: messages through the whole app (dev broker, webhook gateway, the Telegram fake
Bot API) — one delivered after a 429 retry, one dead-lettered then retried from the admin API, one
dropped by a deny rule — and ``claudemesh-gateway trace`` shows each journey, by mesh id and by
native id; the admin API searches and traces them too. On both store backends (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway.cli import EXIT_NOT_FOUND, EXIT_OK, main

from .conftest import FAST_POLL, JWT_SECRET, WH_SECRET, admin_token, bearer, post_inbound, wait_until

_spec = importlib.util.spec_from_file_location(
    "telegram_fake_api_for_trace", Path(__file__).parents[1] / "telegram" / "telegram_fake_api.py")
assert _spec is not None and _spec.loader is not None
fake_api = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fake_api
_spec.loader.exec_module(fake_api)

TOKEN = "123456:TEST-token_abcdefghijklmnopqrstuvwxyz0123"
GROUP = "-1001234567890"


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


async def cli(*argv: str) -> tuple[int, str]:
    return await asyncio.to_thread(run_cli, *argv)  # main() runs its own event loop


@pytest.fixture(params=["sqlite", "postgres"])
def store_table(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``[store]`` of the app: the default SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        return {}
    return {"store": {"backend": "postgres", "dsn": request.getfixturevalue("pg_schema_dsn")}}


def steps(trace: dict[str, Any]) -> list[str]:
    return [e["step"] for e in trace["events"]]


async def test_trace_shows_each_journey_by_mesh_and_native_id(file_app, dev_broker, member, sink, aiohttp_server,
                                                              store_table):
    tg = fake_api.FakeBotAPI(TOKEN)
    server = await aiohttp_server(tg.app, host="127.0.0.1")
    tg.url = str(server.make_url("")).rstrip("/")
    broken = {"on": True}
    sink.script["down"] = lambda body, n: (400, {}) if broken["on"] else (200, {})
    client, runtime, path = await file_app({
        **store_table,
        "admin": {"jwt_secret": JWT_SECRET},
        "mesh": {"dev": FAST_POLL},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET},
                     "tg": {"type": "telegram", "token": TOKEN, "api_base": tg.url, "poll_timeout": 0,
                            "set_commands": False}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.2, "max_attempts": 2, "poll_interval": 0.5,
                     "retry_after_floor": 0.1},
        "routes": [
            {"name": "ops", "mesh": "dev", "topic": "general", "direction": "out", "binds": [
                {"gateway": "tg", "chat": GROUP},
                {"gateway": "wh", "chat": "hook", "options": {"url": sink.url("hook")}}]},
            {"name": "intake", "deny": ["mallory"], "binds": [
                {"gateway": "wh", "chat": "src", "direction": "in"},
                {"gateway": "wh", "chat": "down", "direction": "out", "options": {"url": sink.url("down")}}]},
        ],
    }, broker=dev_broker)
    assert type(runtime.store).__name__ == ("PostgresStore" if store_table else "SqliteStore")
    assert runtime.store.trace_ttl == 7 * 86400.0  # [trace] retention_days reaches either backend
    await runtime.meshes["dev"].wait_connected(10)
    await wait_until(lambda: runtime.meshes["dev"].pollers, 10, "the topic poller")

    # 1. from the mesh: Telegram answers 429 (retry after 1 s) once, then takes it; the webhook at once
    tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    alice = await member("dev_alice")
    mesh_id = await alice.post_topic("general", "deploy done")
    assert mesh_id
    await wait_until(lambda: tg.sent.get(GROUP) and len(sink.received["hook"]) == 1, 30, "both copies")
    tg_native = str(tg.sent[GROUP][0]["message_id"])

    # 2. from a webhook: the destination answers 400 -> dead letter
    await post_inbound(client, "src", {"id": "d1", "sender": "ann", "text": "secret body text"})
    # 3. from a denied sender: dropped
    dropped = await post_inbound(client, "src", {"id": "x1", "sender": "mallory", "text": "let me in"})
    assert dropped["status"] == "dropped"
    await wait_until(lambda: runtime.delivery.stats()["dead_lettered"] == 1, 20, "the dead letter")
    await runtime.trace.flush()

    # -- the mesh message, by its mesh id and by its Telegram message id: same journey
    code, out = await cli("-c", str(path), "trace", mesh_id, "--json")
    assert code == EXIT_OK
    (t,) = json.loads(out)["messages"]
    assert t["summary"]["message_id"] == f"mesh:dev:{mesh_id}"
    assert t["summary"]["status"] == "delivered" and t["summary"]["delivered"] == 2
    assert t["summary"]["routes"] == ["ops"]
    st = steps(t)
    assert st[:2] == ["received", "queued"] and sorted(st[2:]) == ["delivered", "delivered", "failed"]
    assert st.index("failed") < max(i for i, s in enumerate(st) if s == "delivered")
    received = t["events"][0]["detail"]
    assert received["source"] == "mesh/dev:#general" and received["dedup"] == "new"
    assert received["native_id"] == mesh_id
    assert sorted(i["lane"] for i in t["events"][1]["detail"]["items"]) == [f"tg/{GROUP}", "wh/hook"]
    (failed,) = [e for e in t["events"] if e["step"] == "failed"]
    assert failed["detail"]["lane"] == f"tg/{GROUP}" and failed["detail"]["retry_after"] == 1
    assert "429" in failed["detail"]["error"] or "Too Many" in failed["detail"]["error"]
    tg_delivered = [e for e in t["events"] if e["step"] == "delivered" and e["detail"]["lane"] == f"tg/{GROUP}"]
    assert tg_delivered[0]["detail"]["native_ids"] == [tg_native]
    assert tg_delivered[0]["outbox_id"] == failed["outbox_id"]  # the same outbox item, retried
    assert "secret" not in out and "deploy done" not in out  # never the text

    code, by_native = await cli("-c", str(path), "trace", tg_native, "--json")
    assert code == EXIT_OK and json.loads(by_native)["messages"] == [t]
    code, by_outbox = await cli("-c", str(path), "trace", str(failed["outbox_id"]), "--json")
    assert code == EXIT_OK and json.loads(by_outbox)["messages"][0]["summary"]["message_id"] == f"mesh:dev:{mesh_id}"

    # human timeline
    code, text = await cli("-c", str(path), "trace", mesh_id)
    assert code == EXIT_OK
    assert f"message mesh:dev:{mesh_id}  status: delivered" in text
    assert "attempt failed: " in text and "retry-after 1s" in text
    assert f"native id(s) {tg_native}" in text

    # -- the dead letter, by the webhook's native id
    code, out = await cli("-c", str(path), "trace", "d1", "--json")
    (d,) = json.loads(out)["messages"]
    assert d["summary"]["status"] == "dead_letter" and steps(d) == ["received", "queued", "dead_letter"]
    assert d["events"][-1]["detail"]["lane"] == "wh/down" and "400" in d["events"][-1]["detail"]["error"]

    # -- the dropped one: by which rule
    code, out = await cli("-c", str(path), "trace", "x1", "--json")
    (x,) = json.loads(out)["messages"]
    assert x["summary"]["status"] == "dropped" and steps(x) == ["received", "dropped"]
    assert x["events"][-1]["detail"]["reason"] == "denied"
    assert "intake" in x["events"][-1]["detail"]["rule"]
    code, text = await cli("-c", str(path), "trace", "x1")
    assert "dropped: denied (sender refused by route(s) intake)" in text

    code, _ = await cli("-c", str(path), "trace", "no-such-message")
    assert code == EXIT_NOT_FOUND

    # -- admin API: search, trace, and a dead letter retried shows in the trace
    h = bearer(admin_token())
    resp = await client.get("/-/api/messages", params={"route": "intake"}, headers=h)
    assert resp.status == 200
    assert sorted(m["message_id"] for m in (await resp.json())["messages"]) == sorted(
        [x["summary"]["message_id"], d["summary"]["message_id"]])  # the refused one too
    resp = await client.get("/-/api/messages", params={"q": tg_native}, headers=h)
    assert [m["status"] for m in (await resp.json())["messages"]] == ["delivered"]
    resp = await client.get("/-/api/messages", params={"status": "dead_letter", "since": "-3600"}, headers=h)
    assert [m["message_id"] for m in (await resp.json())["messages"]] == [d["summary"]["message_id"]]
    resp = await client.get("/-/api/messages", params={"chat": "wh/src", "sender": "ann"}, headers=h)
    assert [m["message_id"] for m in (await resp.json())["messages"]] == [d["summary"]["message_id"]]
    for bad in ({"status": "nope"}, {"since": "yesterday"}, {"limit": "x"}):
        resp = await client.get("/-/api/messages", params=bad, headers=h)
        assert resp.status == 400, bad
    resp = await client.get("/-/api/messages", params={"q": "d1"})
    assert resp.status == 401  # admin only

    broken["on"] = False
    (dl,) = (await (await client.get("/-/api/dlq", headers=h)).json())["dead_letters"]
    resp = await client.post("/-/api/dlq/retry", json={"ids": [dl["id"]]}, headers=h)
    assert resp.status == 200
    await wait_until(lambda: len(sink.received["down"]) == 1, 20, "the retried dead letter")
    await wait_until(lambda: runtime.delivery.stats()["delivered"] >= 3, 10, "recorded")
    await runtime.trace.flush()
    resp = await client.get("/-/api/messages/d1/trace", headers=h)
    assert resp.status == 200
    body = await resp.json()
    assert body["summary"]["status"] == "delivered"
    assert steps(body) == ["received", "queued", "dead_letter", "dlq_retry", "delivered"]
    assert body["events"][3]["detail"]["actor"] == "auditor@example"
    resp = await client.get("/-/api/messages/nothing-like-this/trace", headers=h)
    assert resp.status == 404
