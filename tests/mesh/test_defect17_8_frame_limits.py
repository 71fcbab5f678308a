"""Issue 17 item 8: frames from the broker are bounded, and a bad frame never drops the connection.

On main the peer connected with ``max_msg_size=0`` (no limit: one 200 MiB frame took the process from
84 to 621 MB) and caught only ValueError/UnicodeDecodeError around ``json.loads``, so one deeply nested
frame (RecursionError) killed the reader and dropped the connection.

Now: a frame over ``MAX_INBOUND_FRAME_BYTES`` is refused by aiohttp from its header (nothing buffered),
counted as ``oversized`` and the connection reconnects with one clear line; a frame nested too deeply,
one that would build too many values, or one that is not JSON is dropped with one log line and a counter
and the connection stays up. The largest legitimate reply the spec allows (a 200-row topic_history page
of maximal posts) still gets through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import pytest
from aiohttp import WSMsgType, web
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, MeshPeer
from claudemesh_gateway.mesh.connection import MAX_FRAME_BYTES, MAX_INBOUND_FRAME_BYTES, MAX_INBOUND_VALUES
from claudemesh_gateway.mesh.crypto import KeyPair

FAST = {"backoff": [0.05], "backoff_jitter": 0.0, "hello_timeout": 1.0, "ack_timeout": 1.0, "request_timeout": 5.0,
        "ping_interval": 5.0, "idle_timeout": 30.0, "roster_refresh": 300}
LOGGER = "claudemesh_gateway.mesh.connection"


class Broker:
    """A loopback broker: acks each hello, then runs ``script(ws, n)`` (n = 1 for the first connection),
    then answers list_peers until the socket closes."""

    def __init__(self, script) -> None:
        self.script = script
        self.connections = 0
        self.frames: list[dict] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        n = self.connections
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            return ws
        await ws.send_json({"type": "hello_ack", "presenceId": f"{n:032d}"})
        await self.script(ws, n)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.frames.append(frame)
            if frame.get("type") == "list_peers":
                await ws.send_json({"type": "peers_list", "peers": [], "_reqId": frame["_reqId"]})
            elif frame.get("type") == "topic_history":
                await ws.send_str(_history_page(frame["_reqId"], frame.get("limit", 50)))
        return ws


def _history_page(req_id: str, rows: int) -> str:
    """A topic_history_response of ``rows`` maximal posts: each body fills what one send frame may carry."""
    nonce = "A" * 32
    body = "B" * (MAX_FRAME_BYTES - 400)  # a send frame's other fields take the rest of its 64 KiB
    messages = [{"id": f"{i:032d}", "senderPubkey": "ab" * 32, "senderMemberId": "m" * 32, "senderName": "alice",
                 "nonce": nonce, "ciphertext": body, "bodyVersion": 2, "createdAt": "2026-12-07T12:00:00.000Z"}
                for i in range(rows)]
    return json.dumps({"type": "topic_history_response", "topic": "T" * 32, "messages": messages, "_reqId": req_id})


@pytest.fixture
async def run(aiohttp_server):
    peers: list[MeshPeer] = []

    async def start(script) -> tuple[Broker, MeshPeer]:
        broker = Broker(script)
        app = web.Application()
        app.router.add_get("/ws", broker.handler)
        server = await aiohttp_server(app)
        cfg = MeshConfig(broker_url=str(server.make_url("/ws")).replace("http://", "ws://"), mesh_id="M" * 32,
                         member_id="me", secret_key=KeyPair.generate().secret_hex,
                         root_key=secrets.token_urlsafe(32), **FAST)
        peer = MeshPeer("hostile", cfg, kv=MemoryKV())
        peers.append(peer)
        await peer.start()
        await peer.wait_connected(3)
        return broker, peer

    yield start
    for p in peers:
        await asyncio.wait_for(p.stop(), 5)


async def _until(pred, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.WARNING and needle in r.getMessage()]


async def test_defect17_8_oversized_frame_is_refused_and_the_peer_reconnects_cleanly(run, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    huge = json.dumps({"type": "push", "messageId": "x", "ciphertext": "C" * MAX_INBOUND_FRAME_BYTES})

    async def script(ws, n):
        if n == 1:
            await asyncio.sleep(0.1)  # let the test see the first connection up
            await ws.send_str(huge)

    broker, peer = await run(script)
    await _until(lambda: broker.connections == 2 and peer.state == "connected")
    assert peer.bad_frames == {"oversized": 1}
    lines = _warnings(caplog, "inbound limit")
    assert len(lines) == 1 and str(MAX_INBOUND_FRAME_BYTES) in lines[0] and "reconnecting" in lines[0]
    assert not _warnings(caplog, "this is a bug")  # we closed with 1009, not the broker
    assert await peer.peers(refresh=True) == []    # the new connection works


async def test_defect17_8_largest_legitimate_reply_fits_under_the_cap(run):
    """A topic_history page at the broker's maximum limit (200), every row a maximal post."""
    async def script(ws, n):
        return None

    broker, peer = await run(script)
    assert len(_history_page("r", 200).encode()) < MAX_INBOUND_FRAME_BYTES
    reply = await peer.connection.request({"type": "topic_history", "topic": "T" * 32, "limit": 200})
    assert len(reply["messages"]) == 200
    assert broker.connections == 1 and peer.bad_frames == {}


async def test_defect17_8_deeply_nested_frame_is_dropped_and_the_connection_survives(run, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    deep = '{"type":"push","eventData":' + "[" * 100_000 + "]" * 100_000 + "}"

    async def script(ws, n):
        for _ in range(3):
            await ws.send_str(deep)
            await ws.send_bytes(deep.encode())

    broker, peer = await run(script)
    await _until(lambda: peer.bad_frames.get("too_deep") == 6)
    assert await peer.peers(refresh=True) == []
    assert broker.connections == 1 and peer.state == "connected" and peer.reconnects == 0
    assert len(_warnings(caplog, "nested too deeply")) == 1   # one line, then DEBUG for the repeats
    assert not [r for r in caplog.records if r.exc_info and r.name == LOGGER]


async def test_defect17_8_value_bomb_is_dropped_unparsed(run, caplog):
    """16 MiB of ``[{},{},...]`` would be millions of dicts: counted and dropped before json.loads."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    bomb = "[" + "{}," * MAX_INBOUND_VALUES + "{}]"

    async def script(ws, n):
        await ws.send_str(bomb)

    broker, peer = await run(script)
    await _until(lambda: peer.bad_frames.get("too_many_values") == 1)
    assert await peer.peers(refresh=True) == []
    assert broker.connections == 1 and peer.state == "connected"
    assert len(_warnings(caplog, "JSON values")) == 1


async def test_defect17_8_garbage_is_counted_with_one_line_per_reason(run, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def script(ws, n):
        for _ in range(50):
            await ws.send_str("not json")
            await ws.send_bytes(b"\xff\xfe")
            await ws.send_str("[1, 2, 3]")

    broker, peer = await run(script)
    await _until(lambda: sum(peer.bad_frames.values()) == 150)
    assert peer.bad_frames == {"not_json": 100, "no_type": 50}
    assert len(_warnings(caplog, "not JSON")) == 1 and len(_warnings(caplog, '"type"')) == 1
    assert await peer.peers(refresh=True) == []
    assert broker.connections == 1 and peer.state == "connected"
