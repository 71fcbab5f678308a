"""Issue 16, "a hostile broker": a loopback WebSocket server speaking the protocol that floods the peer,
sends huge frames and garbage, duplicated and out-of-order rows, acks for ids nobody sent, and closes at
bad moments. The peer survives with bounded memory and recovers. Every scenario is bounded in count
(hundreds to a few thousand frames) and in time (waits are deadlines, never speed assertions).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from claudemesh_gateway.errors import DeliveryError
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, MeshPeer, connection, inbound
from claudemesh_gateway.mesh.connection import ConnectionLost
from claudemesh_gateway.mesh.crypto import KeyPair

FAST = {"backoff": [0.05, 0.1], "backoff_jitter": 0.0, "hello_timeout": 1.0, "ack_timeout": 1.0,
        "request_timeout": 2.0, "ping_interval": 5.0, "idle_timeout": 30.0, "roster_refresh": 300,
        "topic_poll_interval": 0.05, "topic_poll_idle_interval": 0.1}
TOPIC_ID = "T" * 32
ALICE = "ab" * 32


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def push(mid: str, text: str) -> dict[str, Any]:
    """A live broadcast push (v1 body, with senderName so no message_status is needed)."""
    return {"type": "push", "messageId": mid, "meshId": "M" * 32, "senderPubkey": ALICE, "senderName": "alice",
            "priority": "next", "nonce": b64("n" * 24), "ciphertext": b64(text), "createdAt": iso(int(time.time() * 1000))}


class Hostile:
    """The broker. ``script(self, ws, n)`` runs after connection ``n``'s hello; returning "closed" ends it,
    anything else falls through to :meth:`serve`, which answers verbs honestly (hooks can be swapped)."""

    def __init__(self, script: Callable[..., Awaitable[Any]]) -> None:
        self.script = script
        self.connections = 0
        self.transports: dict[int, Any] = {}
        self.frames: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []  # topic_history rows, any order
        self.on_history: Callable[[dict[str, Any], list[dict[str, Any]]], list[Any]] | None = None
        self.on_frame: Callable[[web.WebSocketResponse, dict[str, Any], int], Awaitable[bool]] | None = None

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.connections += 1
        n = self.connections
        self.transports[n] = request.transport
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            return ws
        if await self.script(self, ws, n) == "closed":
            return ws
        await self.serve(ws, n)
        return ws

    @staticmethod
    async def ack(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json({"type": "hello_ack", "presenceId": f"{n:032d}"})

    async def serve(self, ws: web.WebSocketResponse, n: int) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.frames.append(frame)
            if self.on_frame is not None and await self.on_frame(ws, frame, n):
                return
            kind, rid = frame.get("type"), frame.get("_reqId")
            if kind == "list_peers":
                await ws.send_json({"type": "peers_list", "peers": [], "_reqId": rid})
            elif kind == "topic_list":
                await ws.send_json({"type": "topic_list_response", "_reqId": rid, "topics": [
                    {"id": TOPIC_ID, "name": "general", "visibility": "public", "memberCount": 2}]})
            elif kind == "topic_history":
                newest = sorted(self.rows, key=lambda r: (r["createdAt"], r["id"]), reverse=True)
                if frame.get("beforeId"):
                    anchor = next((r for r in self.rows if r["id"] == frame["beforeId"]), None)
                    newest = [r for r in newest if anchor is not None and r["createdAt"] < anchor["createdAt"]]
                page: list[Any] = newest[: int(frame.get("limit") or 50)]
                if self.on_history is not None:
                    page = self.on_history(frame, page)
                await ws.send_json({"type": "topic_history_response", "topic": frame["topic"], "messages": page,
                                    "_reqId": rid})
            elif kind == "send":
                await ws.send_json({"type": "ack", "id": frame["id"], "messageId": secrets.token_hex(16),
                                    "queued": True})


@pytest.fixture
async def hostile(aiohttp_server):
    peers: list[MeshPeer] = []

    async def start(script, *, on_message=None, connect: bool = True, **over) -> tuple[Hostile, MeshPeer]:
        broker = Hostile(script)
        app = web.Application()
        app.router.add_get("/ws", broker.handler)
        server = await aiohttp_server(app)
        cfg = MeshConfig(broker_url=str(server.make_url("/ws")).replace("http://", "ws://"), mesh_id="M" * 32,
                         member_id="me", secret_key=KeyPair.generate().secret_hex,
                         root_key=secrets.token_urlsafe(32), **{**FAST, **over})
        peer = MeshPeer("hostile", cfg, kv=MemoryKV(), on_message=on_message)
        peers.append(peer)
        await peer.start()
        if connect:
            await peer.wait_connected(5)
        return broker, peer

    yield start
    for p in peers:
        await asyncio.wait_for(p.stop(), 10)


async def until(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _garbage(i: int) -> str | bytes:
    kinds: list[str | bytes] = [
        "not json at all", b"\xff\xfe\x00binary", "[" * 5000 + "]" * 5000, '"just a string"', "[1,2,3]",
        json.dumps({"no": "type"}), json.dumps({"type": 42}), json.dumps({"type": f"verb_{i}", "x": [1] * 50}),
        json.dumps({"type": "ack", "id": f"nobody-{i}", "messageId": "Q" * 32, "queued": True}),
        json.dumps({"type": "peers_list", "peers": [], "_reqId": f"req-{i}-unknown"}),
        json.dumps({"type": "error", "code": "topic_not_found", "message": "x", "id": f"req-{i}"}),
        json.dumps({"type": "push", "subtype": "system", "senderPubkey": "system", "event": "peer_joined",
                    "eventData": {"deep": [[[[i]]]]}}),
        json.dumps({"type": "push", "messageId": 7, "senderPubkey": None}),
        json.dumps({"type": "hello_ack", "presenceId": "X" * 32}),   # a second ack: ignored
        "{" * 3000, json.dumps({"type": "push", "messageId": f"bad-{i}", "senderPubkey": ALICE,
                                 "senderName": "x", "nonce": "", "ciphertext": "%%%not base64%%%"}),
    ]
    return kinds[i % len(kinds)]


async def test_hostile_flood_of_garbage_duplicates_and_stray_acks(hostile, caplog):
    caplog.set_level(logging.DEBUG, logger="claudemesh_gateway.mesh")
    got: list[str] = []

    async def on_message(item):
        got.append(item.text)

    texts = {f"m{i:04d}": f"broadcast {i}" for i in range(300)}
    order = list(texts) * 2                       # every push twice
    random.Random(16).shuffle(order)              # and out of order

    async def script(h, ws, n):
        await h.ack(ws, n)
        garbage = iter(range(1500))
        for mid in order:
            await ws.send_json(push(mid, texts[mid]))
            for _ in range(3):
                i = next(garbage, None)
                if i is not None:
                    g = _garbage(i)
                    await (ws.send_bytes(g) if isinstance(g, bytes) else ws.send_str(g))

    broker, peer = await hostile(script, on_message=on_message)
    await until(lambda: len(got) >= 300)
    assert await peer.peers(refresh=True) == []   # a round trip: everything before it was read
    await until(lambda: peer.pushes.queue.qsize() == 0)
    assert sorted(got) == sorted(texts.values())  # each once
    assert broker.connections == 1 and peer.state == "connected" and peer.reconnects == 0
    acked = [f["brokerMessageId"] for f in broker.frames if f.get("type") == "client_ack"]
    assert set(acked) >= set(texts)               # duplicates acked too (A.10)
    bad = peer.bad_frames
    assert bad.get("not_json", 0) > 0 and bad.get("too_deep", 0) > 0 and bad.get("no_type", 0) > 0
    assert peer.pushes.dropped["duplicate"] == 300 and peer.pushes.dropped["undecryptable"] > 0
    assert bad.get("unsolicited_error", 0) > 0
    # about 1,500 bad frames, and the log holds one WARNING per reason (the rest at DEBUG)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.endswith("connection")]
    assert 0 < len(loud) <= len(bad)


async def test_hostile_push_flood_keeps_the_push_queue_bounded(hostile, monkeypatch):
    monkeypatch.setattr(inbound, "MAX_QUEUED_PUSH_BYTES", 1024 * 1024)
    release = asyncio.Event()
    got: list[str] = []

    async def on_message(item):                   # a slow downstream: nothing is taken until released
        await release.wait()
        got.append(item.message_id)

    body = "x" * 16_000
    sent = [f"f{i:04d}" for i in range(400)]      # 400 x 16 kB = 6.4 MB, 6x the queue's budget

    async def script(h, ws, n):
        await h.ack(ws, n)
        for mid in sent:
            await ws.send_json(push(mid, body))

    broker, peer = await hostile(script, on_message=on_message)
    assert await peer.peers(refresh=True) == []   # the reader has dispatched every push
    handler = peer.pushes
    assert 0 < handler.max_queued_bytes <= 1024 * 1024
    dropped = handler.dropped["overflow"]
    assert dropped > 300                          # most of the flood was refused, not buffered
    assert broker.connections == 1 and peer.state == "connected"
    release.set()
    await until(lambda: len(got) == len(sent) - dropped)
    def acked() -> set[str]:
        return {f["brokerMessageId"] for f in broker.frames if f.get("type") == "client_ack"}

    await until(lambda: len(acked()) == len(got))
    assert acked() == set(got)                    # what was dropped stays unacked: a queued row returns
    assert handler.queued_bytes == 0
    # and the peer takes pushes again once the queue has room
    await broker_push(broker, peer, "after")
    await until(lambda: "after" in got)


async def broker_push(broker: Hostile, peer: MeshPeer, mid: str) -> None:
    """Make the broker push one more frame on the live socket (through its on_frame hook)."""
    async def on_frame(ws, frame, n):
        if frame.get("type") == "list_peers":
            await ws.send_json(push(mid, "late"))
        return False
    broker.on_frame = on_frame
    await peer.peers(refresh=True)


async def test_hostile_history_duplicated_out_of_order_and_junk_rows(hostile):
    got: list[tuple[int, str]] = []

    async def on_message(item):
        got.append((item.created_at, item.id))

    base = int(time.time() * 1000) - 60_000
    rng = random.Random(1616)

    def row(i: int, t: int) -> dict[str, Any]:
        return {"id": f"r{i:04d}{'x' * 27}", "senderPubkey": ALICE, "senderMemberId": "alice", "senderName": "alice",
                "nonce": b64("n" * 24), "ciphertext": b64(f"row {i}"), "bodyVersion": 1, "createdAt": iso(t)}

    async def script(h, ws, n):
        await h.ack(ws, n)

    broker, peer = await hostile(script, on_message=on_message)
    broker.rows = [row(i, base + i) for i in range(40)]            # history before the watch: not delivered
    posted: list[dict[str, Any]] = []

    def on_history(frame, page):
        # each poll: maybe a new post; the page comes back shuffled, with duplicates and junk entries
        if len(posted) < 60 and rng.random() < 0.7:
            r = row(1000 + len(posted), int(time.time() * 1000))
            posted.append(r)
            broker.rows.append(r)
            page = sorted(broker.rows, key=lambda r: r["createdAt"], reverse=True)[: int(frame.get("limit") or 50)]
        page = page + [dict(r) for r in page[: rng.randint(0, 5)]]
        page += [None, 5, "row", {"id": 7}, {"no": "id"}, []]
        rng.shuffle(page)
        return page

    broker.on_history = on_history
    await peer.watch_topic("general", timeout=5)
    await until(lambda: len(posted) == 60 and len(got) == 60, timeout=30)
    await asyncio.sleep(0.3)                                       # more polls: still nothing new
    assert [i for _, i in got] == [r["id"] for r in posted]        # each once, oldest first
    assert broker.connections == 1 and peer.state == "connected"


async def test_hostile_closes_at_bad_moments_then_recovers(hostile):
    async def script(h, ws, n):
        if n == 1:                                # closes on the hello, before any ack
            await ws.close(code=1011, message=b"boom")
            return "closed"
        if n == 2:                                # acks, then drops TCP without a close frame
            await h.ack(ws, n)
            await asyncio.sleep(0.05)
            h.transports[n].abort()                # a network failure, not a close
            return "closed"
        await h.ack(ws, n)
        if n == 5:                                # stray acks, replies and a second hello_ack
            for i in range(50):
                await ws.send_json({"type": "ack", "id": f"ghost-{i}", "messageId": "G" * 32, "queued": True})
                await ws.send_json({"type": "hello_ack", "presenceId": "Y" * 32})
        return None

    async def on_frame(ws, frame, n):
        if n == 3 and frame.get("type") == "message_status":   # a request: close instead of replying
            await ws.close(code=1001, message=b"shutting down")
            return True
        if n == 4 and frame.get("type") == "send":         # a send: close before its ack
            await ws.close(code=1000, message=b"disconnected")
            return True
        return False

    broker, peer = await hostile(script, connect=False)
    broker.on_frame = on_frame
    await until(lambda: broker.connections == 3 and peer.state == "connected")
    with pytest.raises(ConnectionLost):
        await peer.connection.request({"type": "message_status", "messageId": "Q" * 32})
    await until(lambda: broker.connections >= 4 and peer.state == "connected")
    qid = None
    for _ in range(5):                            # the core's outbox would retry a transient failure
        try:
            qid = await peer.broadcast("survives")
            break
        except DeliveryError as exc:
            assert not exc.permanent
            await peer.wait_connected(5)
    assert qid and len(qid) == 32
    sends = [f for f in broker.frames if f.get("type") == "send"]
    assert len({f["id"] for f in sends}) <= 2     # one message: resent with the same id, not duplicated
    assert await peer.peers(refresh=True) == []
    assert peer.state == "connected" and peer.presence_id == f"{broker.connections:032d}"
    assert peer.connection.terminal_error is None


async def test_hostile_huge_frames_reconnect_with_growing_backoff(hostile, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="claudemesh_gateway.mesh.connection")
    monkeypatch.setattr(connection, "MAX_INBOUND_FRAME_BYTES", 256 * 1024)   # the same path, smaller frames
    huge = json.dumps({"type": "push", "messageId": "huge", "ciphertext": "A" * (300 * 1024)})

    async def script(h, ws, n):
        await h.ack(ws, n)
        if n <= 3:
            await asyncio.sleep(0.05)
            await ws.send_str(huge)
            return "closed"
        return None

    broker, peer = await hostile(script, connect=False, backoff=[0.1, 0.2, 0.4])
    await until(lambda: broker.connections == 4 and peer.state == "connected")
    assert peer.bad_frames == {"oversized": 3}
    # each of those sockets was acknowledged (which resets the ordinary backoff), yet the delays grow
    delays = [float(r.getMessage().rsplit(" ", 1)[1].rstrip("s")) for r in caplog.records
              if r.getMessage().startswith("mesh hostile: reconnecting in ")]
    assert delays == [0.1, 0.2, 0.4]
    assert await peer.peers(refresh=True) == []
    assert peer.connection.terminal_error is None


async def test_hostile_push_queue_is_bounded_in_count_too(hostile, monkeypatch, caplog):
    monkeypatch.setattr(inbound, "MAX_QUEUED_PUSHES", 5)
    release = asyncio.Event()
    got: list[str] = []

    async def on_message(item):
        await release.wait()
        got.append(item.message_id)

    async def script(h, ws, n):
        await h.ack(ws, n)
        for i in range(50):
            await ws.send_json(push(f"c{i:02d}", "tiny"))

    _, peer = await hostile(script, on_message=on_message)
    assert await peer.peers(refresh=True) == []
    # one in on_message, five waiting, the rest refused
    assert peer.pushes.dropped["overflow"] == 44
    lines = [r for r in caplog.records if "push queue full" in r.getMessage() and r.levelname == "WARNING"]
    assert len(lines) == 1                         # one line for 44 drops
    release.set()
    await until(lambda: len(got) == 6)


async def test_hostile_long_ids_do_not_pin_memory(hostile):
    """Ids are kept in bounded dedup memories (10,000 push keys, 1,000 row ids): 60 kB ids must not enter."""
    got: list[Any] = []

    async def on_message(item):
        got.append(item)

    long_mid, long_cmid = "M" * 60_000, "C" * 60_000

    async def script(h, ws, n):
        await h.ack(ws, n)
        await ws.send_json(push(long_mid, "long message id"))
        await ws.send_json({**push("short-id", "long client id"), "client_message_id": long_cmid})

    broker, peer = await hostile(script, on_message=on_message)
    await until(lambda: len(got) == 1)
    assert got[0].text == "long client id" and got[0].id == "short-id" and got[0].client_message_id is None
    handler = peer.pushes
    assert long_mid not in handler.seen and long_cmid not in handler.seen and "short-id" in handler.seen
    assert handler.dropped["malformed"] == 1
    await until(lambda: any(f.get("type") == "client_ack" for f in broker.frames))
    acks = [f for f in broker.frames if f.get("type") == "client_ack"]
    assert acks == [{"type": "client_ack", "brokerMessageId": "short-id"}]   # no 60 kB ack goes back
    # topic rows with long ids are skipped; the poller's seen list stays short
    now = int(time.time() * 1000)
    poller = await peer.watch_topic("general", timeout=5)
    broker.rows = [{"id": "L" * 60_000, "senderPubkey": ALICE, "senderMemberId": "alice", "nonce": "",
                    "ciphertext": b64("long row id"), "bodyVersion": 1, "createdAt": iso(now + 1000)},
                   {"id": "R" * 32, "senderPubkey": ALICE, "senderMemberId": "alice", "nonce": "",
                    "ciphertext": b64("short row id"), "bodyVersion": 1, "createdAt": iso(now + 1001)}]
    await until(lambda: any(i.text == "short row id" for i in got))
    await until(lambda: "R" * 32 in poller.seen)
    assert all(len(i) <= 128 for i in poller.seen)
    assert [i.text for i in got if i.kind == "topic"] == ["short row id"]
