"""Issue 15 dashboard data: per-minute throughput of the last hour, the live event stream, and message
search by text only while ``[trace] debug_text_minutes`` keeps it."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from claudemesh_gateway.events import DeliveryFailed, MessageDelivered, MessageDropped, MessageReceived
from claudemesh_gateway.messages import Address, Message
from claudemesh_gateway.plugins.webhook.testing import WebhookSink, signed_post
from claudemesh_gateway.testing import build_test_app
from claudemesh_gateway.web import throughput as tp
from claudemesh_gateway.web.textsearch import TextIndex

SECRET = "issue15-jwt-secret-0123456789-abcdef"
AUD = "claudemesh-gateway"
WH = "issue15-webhook-secret-0123456789"
T0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)  # a minute boundary


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _msg() -> Message:
    return Message(id="m", origin=Address("wh", "src"), sender="ann", text="body")


def test_throughput_counts_per_minute_and_rolls_the_hour() -> None:
    now = {"t": T0 + 30}
    t = tp.Throughput(clock=lambda: now["t"])
    to = Address("tg", "1")
    t.observe(MessageReceived(message=_msg(), created=_at(T0 + 1)))
    t.observe(MessageDelivered(message=_msg(), to=to, route="ops", created=_at(T0 + 2)))
    t.observe(MessageDelivered(message=_msg(), to=to, route="ops", created=_at(T0 - 60)))  # the minute before
    t.observe(DeliveryFailed(message=_msg(), to=to, route="ops", error="x", permanent=False, created=_at(T0 + 3)))
    t.observe(DeliveryFailed(message=_msg(), to=to, route="ops", error="x", permanent=True, created=_at(T0 + 4)))
    t.observe(MessageDropped(message=_msg(), reason="denied", created=_at(T0 + 5)))
    t.observe(MessageDropped(message=_msg(), reason="duplicate", created=_at(T0 + 5)))  # not a drop worth a bar
    s = t.snapshot()
    assert len(s["minutes"]) == tp.MINUTES and s["minutes"][-1] == T0
    ops = s["routes"]["ops"]
    assert ops["delivered"][-2:] == [1, 1] and ops["failed"][-1] == 1 and ops["dead"][-1] == 1
    assert s["gateways"]["wh"]["received"][-1] == 1 and s["gateways"]["wh"]["dropped"][-1] == 1
    assert s["gateways"]["tg"]["delivered"][-1] == 1
    now["t"] += 120  # two minutes later: the counts moved left, new minutes are empty
    s = t.snapshot()
    assert s["routes"]["ops"]["delivered"][-4:] == [1, 1, 0, 0]
    now["t"] += 3600  # an hour later: all gone
    assert sum(t.snapshot()["routes"]["ops"]["delivered"]) == 0
    for i in range(tp.MAX_KEYS + 10):  # bounded however many route names appear
        t.observe(MessageDelivered(message=_msg(), to=to, route=f"r{i}", created=_at(now["t"])))
    assert len(t.routes) == tp.MAX_KEYS


@pytest.fixture
async def app_with_sink(request, tmp_path: Path, aiohttp_server):
    """The app with a webhook route to a sink; an indirect parameter adds keys to ``[trace]``."""
    sink = WebhookSink(WH)
    server = await aiohttp_server(sink.app(), host="127.0.0.1")
    sink.base = str(server.make_url("/sink"))
    client, runtime = await build_test_app({
        "admin": {"jwt_secret": SECRET},
        "gateways": {"wh": {"type": "webhook", "secret": WH}},
        "trace": {"flush_interval": 0.05, **getattr(request, "param", {})},
        "routes": [{"name": "intake", "binds": [
            {"gateway": "wh", "chat": "src", "direction": "in"},
            {"gateway": "wh", "chat": "up", "direction": "out", "options": {"url": sink.url("up")}}]}],
    }, state_dir=tmp_path / "gw")
    try:
        yield client, runtime, sink
    finally:
        await client.close()


def _auth() -> dict[str, str]:
    tok = jwt.encode({"sub": "t", "aud": AUD, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {tok}"}


async def _read_events(resp, n: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    buf = b""
    async with asyncio.timeout(20):
        while len(out) < n:
            buf += await resp.content.readany()
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                kind, data = "message", ""
                for line in block.decode().split("\n"):
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                if data:
                    out.append((kind, data))
    return out


async def test_live_stream_carries_each_step_and_ends_at_shutdown(app_with_sink) -> None:
    client, _runtime, _sink = app_with_sink
    assert (await client.get("/-/api/live")).status == 401
    resp = await client.get("/-/api/live", headers=_auth())
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    (hello,) = await _read_events(resp, 1)
    assert hello == ("hello", '{"trace": true}')
    body, headers = signed_post({"id": "n1", "sender": "ann", "text": "do not stream me"}, WH)
    assert (await client.post("/gateways/wh/src", data=body, headers=headers)).status == 200
    events = [json.loads(d) for k, d in await _read_events(resp, 3) if k == "message"]
    assert [e["step"] for e in events] == ["received", "queued", "delivered"]
    assert all(e["message_id"] == "webhook:wh:src:n1" for e in events)
    assert events[1]["lanes"] == ["wh/up"] and events[2]["lane"] == "wh/up"
    assert "do not stream me" not in json.dumps(events)
    # the app's shutdown hook ends every stream (the handler returns instead of holding the shutdown)
    from claudemesh_gateway.web import appkeys

    hub = client.server.app[appkeys.LIVE]
    assert len(hub.clients) == 1
    await hub.close()
    async with asyncio.timeout(10):
        rest = await resp.content.read()
    assert b"data:" not in rest and resp.content.at_eof() and not hub.clients


async def test_overview_has_the_hour_of_throughput(app_with_sink) -> None:
    client, _runtime, sink = app_with_sink
    body, headers = signed_post({"id": "n2", "sender": "ann", "text": "hi"}, WH)
    assert (await client.post("/gateways/wh/src", data=body, headers=headers)).status == 200
    async with asyncio.timeout(20):
        while not sink.received["up"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    async with asyncio.timeout(20):
        while True:
            o = await (await client.get("/-/api/overview", headers=_auth())).json()
            if sum(o["throughput"]["routes"].get("intake", {}).get("delivered", [])) == 1:
                break
            await asyncio.sleep(0.05)
    assert o["trace"] is True
    assert sum(o["throughput"]["gateways"]["wh"]["received"]) == 1
    assert len(o["throughput"]["minutes"]) == 60


# -- message search by text: only while [trace] debug_text_minutes keeps it ---------------------------------------------
@pytest.mark.parametrize("app_with_sink", [{}, {"debug_text_minutes": 5}], ids=["text-off", "text-on"],
                         indirect=True)
async def test_search_by_text_only_while_debug_text_is_kept(app_with_sink) -> None:
    client, runtime, sink = app_with_sink
    text_on = runtime.settings.trace.debug_text_minutes > 0
    for i, text in enumerate(["the disk is almost full", "all good"]):
        body, headers = signed_post({"id": f"t{i}", "sender": "ann", "text": text}, WH)
        assert (await client.post("/gateways/wh/src", data=body, headers=headers)).status == 200
    async with asyncio.timeout(20):
        while len(sink.received["up"]) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await runtime.trace.flush()
    async with asyncio.timeout(20):  # the observers hear of the messages in the background
        while True:
            r = await (await client.get("/-/api/messages", params={"q": "ALMOST full"}, headers=_auth())).json()
            if r["messages"] or not text_on:
                break
            await asyncio.sleep(0.05)
    assert r["text_search"] is text_on
    if text_on:
        assert [m["message_id"] for m in r["messages"]] == ["webhook:wh:src:t0"]
        assert "note" not in r
        assert "almost" not in json.dumps(r)  # matched, never shown
    else:
        assert r["messages"] == [] and "text search is off" in r["note"]
    # ids are found either way, and the other filters still apply to text matches
    r = await (await client.get("/-/api/messages", params={"q": "t1"}, headers=_auth())).json()
    assert [m["message_id"] for m in r["messages"]] == ["webhook:wh:src:t1"]
    r = await (await client.get("/-/api/messages", params={"q": "almost", "route": "other"}, headers=_auth())).json()
    assert r["messages"] == []
    o = await (await client.get("/-/api/overview", headers=_auth())).json()
    assert o["text_search"] is text_on


def test_text_index_forgets_after_its_window_and_beyond_its_cap() -> None:
    now = {"t": 1000.0}
    idx = TextIndex(1, max_messages=3, clock=lambda: now["t"])
    idx.add("a", "Disk almost FULL")
    now["t"] += 30
    idx.add("b", "disk fine")
    assert idx.search("disk") == ["b", "a"] and idx.search("full") == ["a"] and idx.search("  ") == []
    now["t"] += 31  # a is 61 s old: past the one-minute window
    assert idx.search("disk") == ["b"] and len(idx) == 1
    for m in ("c", "d", "e"):
        idx.add(m, "disk")
    assert len(idx) == 3 and "b" not in idx.search("disk")
    idx.add("c", "edited text")  # an edit keeps the newest text
    assert idx.search("disk") == ["e", "d"] and idx.search("edited") == ["c"]
    with pytest.raises(ValueError):
        TextIndex(0)
