"""Issue 17 item 3: a ``createdAt`` that does not convert (``1e999``, ``NaN``, out of range) blocked the
whole topic while the row existed, and such pushes were never acknowledged (they returned on every
drain). Now such a row or push is delivered with the receipt time, logged and counted; nothing else
in the topic waits, and the push is acked. The fake broker below sends the JSON literally, as a
broken or hostile broker would (Python's json reads ``1e999`` as inf and ``NaN`` as nan)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from aiohttp import WSMsgType, web
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, MeshPeer
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.mesh.types import parse_time_ms
from claudemesh_gateway.routing.pipeline import Pipeline

MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
TOPIC_ID = "t" * 32
FAST = {"backoff": [0.05], "backoff_jitter": 0.0, "hello_timeout": 1.0, "ack_timeout": 1.0, "request_timeout": 1.0,
        "roster_refresh": 30, "topic_poll_interval": 0.05, "topic_poll_idle_interval": 0.1}
BAD = ["1e999", "-1e999", "NaN", "1e300", "100000000000000000000000000000000", "-5", '"garbage"',
       '"+275760-09-13T00:00:00.000Z"', '"0000-01-01T00:00:00Z"', "true", "null"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _raw(frame: dict, **literal: str) -> str:
    """``frame`` as JSON text with each ``literal`` value spliced in verbatim (``1e999``, ``NaN``)."""
    text = json.dumps({**frame, **{k: f"@@{k}@@" for k in literal}})
    for k, v in literal.items():
        text = text.replace(f'"@@{k}@@"', v)
    return text


def _row(row_id: str, created_json: str, text: str) -> str:
    return _raw({"id": row_id, "senderPubkey": "c" * 64, "senderMemberId": "carol", "senderName": "carol",
                 "nonce": "", "ciphertext": _b64(text), "bodyVersion": 1}, createdAt=created_json)


class Broker:
    """Answers the verbs a watching peer uses; ``rows`` (JSON text, newest first) is the topic."""

    def __init__(self) -> None:
        self.rows: list[str] = [_row("old", '"2026-01-01T00:00:00.000Z"', "before the watch")]
        self.frames: list[dict] = []
        self.pushes: list[str] = []
        self.history_requests = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            return ws
        await ws.send_json({"type": "hello_ack", "presenceId": "P" * 32})
        for push in self.pushes:
            await ws.send_str(push)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.frames.append(frame)
            rid = frame.get("_reqId")
            if frame.get("type") == "list_peers":
                await ws.send_json({"type": "peers_list", "peers": [], "_reqId": rid})
            elif frame.get("type") == "topic_list":
                await ws.send_json({"type": "topic_list_response", "_reqId": rid,
                                    "topics": [{"id": TOPIC_ID, "name": "general"}]})
            elif frame.get("type") == "topic_history":
                self.history_requests += 1
                rows = [] if "beforeId" in frame else self.rows[: frame["limit"]]
                await ws.send_str(_raw({"type": "topic_history_response", "topic": frame["topic"], "_reqId": rid},
                                       messages="[" + ",".join(rows) + "]"))
        return ws


@pytest.fixture
async def fake(aiohttp_server):
    made = []

    async def make(broker: Broker, on_message) -> MeshPeer:
        app = web.Application()
        app.router.add_get("/ws", broker.handler)
        server = await aiohttp_server(app)
        cfg = MeshConfig(broker_url=str(server.make_url("/ws")).replace("http://", "ws://"), mesh_id="M" * 32,
                         member_id="me", secret_key=KeyPair.generate().secret_hex,
                         root_key=secrets.token_urlsafe(32), **FAST)
        peer = MeshPeer("fake", cfg, kv=MemoryKV(), on_message=on_message)
        made.append(peer)
        await peer.start()
        await peer.wait_connected(3)
        return peer

    yield make
    for p in made:
        await asyncio.wait_for(p.stop(), 5)


async def _until(pred, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not pred():  # noqa: ASYNC110 - state of other tasks
            await asyncio.sleep(0.01)


async def test_topic_rows_whose_created_at_does_not_convert_are_delivered_and_block_nothing(fake):
    broker, got = Broker(), []
    peer = await fake(broker, got.append)
    poller = await peer.watch_topic("general")
    await _until(lambda: poller.initialized and poller.polls >= 1)
    assert got == []  # the first run starts at "now"
    rows = [_row("good-1", '"2026-06-01T00:00:00.000Z"', "good before")]
    rows += [_row(f"bad-{i}", value, f"bad {value}") for i, value in enumerate(BAD)]
    rows += [_row("good-2", '"2026-06-01T00:00:01.000Z"', "good after")]
    broker.rows = rows[::-1] + broker.rows  # newest first
    await _until(lambda: len(got) >= len(rows))
    assert [i.text for i in got] == ["good before", *[f"bad {v}" for v in BAD], "good after"]
    assert all(i.created_at == 0 for i in got[1:-1])  # unknown: the core uses the receipt time
    assert got[0].created_at > 0 and got[-1].created_at > 0
    assert poller.bad_timestamps == len(BAD) and poller.last_error is None
    # nothing returns, and a later row is not held up
    polls = poller.polls
    broker.rows.insert(0, _row("good-3", '"2026-06-01T00:00:02.000Z"', "later"))
    await _until(lambda: poller.polls >= polls + 3 and len(got) > len(rows))
    assert [i.text for i in got][len(rows):] == ["later"]
    assert peer.poll_stats()["general"]["bad_timestamps"] == len(BAD)


async def test_a_push_whose_created_at_does_not_convert_is_delivered_and_acked(fake):
    broker, got = Broker(), []
    for i, value in enumerate(BAD):
        broker.pushes.append(_raw({"type": "push", "messageId": f"m{i}", "senderPubkey": "ab" * 32,
                                   "senderName": "bob", "priority": "next", "nonce": "",
                                   "ciphertext": _b64(f"hello {i}")}, createdAt=value))
    await fake(broker, got.append)
    await _until(lambda: len(got) == len(BAD)
                 and sum(1 for f in broker.frames if f.get("type") == "client_ack") == len(BAD))
    assert [i.text for i in got] == [f"hello {i}" for i in range(len(BAD))]
    assert {i.created_at for i in got} == {0}
    acks = [f["brokerMessageId"] for f in broker.frames if f.get("type") == "client_ack"]
    assert acks == [f"m{i}" for i in range(len(BAD))]


@pytest.mark.parametrize("created_ms", [10**30, float("inf"), float("nan"), -(10**20), 1e300, MAX_TIME_MS + 1])
def test_the_pipeline_gives_an_unconvertible_created_at_the_receipt_time(created_ms):
    inbound = SimpleNamespace(kind="topic", topic="general", id="row-1", text="hi", sender_pubkey="ab" * 32,
                              sender_name="carol", sender_member_id=None, reply_to_id=None, created_at=created_ms)
    before = datetime.now(UTC)
    message = Pipeline.mesh_message("dev", inbound)
    assert before <= message.created <= datetime.now(UTC)


def test_parse_time_ms_is_zero_for_what_does_not_convert_and_never_raises():
    for value in [float("inf"), float("-inf"), float("nan"), 1e300, 10**400, -1, 0, True, None, "x", [],
                  "+275760-09-13T00:00:00.000Z", "0000-01-01T00:00:00Z", "2026-13-01T00:00:00Z"]:
        assert parse_time_ms(value) == 0, value
    assert parse_time_ms("2026-01-02T03:04:05.678Z") == 1767323045678
    assert parse_time_ms("9999-12-31T23:59:59.999Z") == MAX_TIME_MS
    now = int(time.time() * 1000)
    assert parse_time_ms(now) == now and parse_time_ms(now + 0.5) == now
