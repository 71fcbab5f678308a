"""The peer against a scripted WebSocket fake: garbage frames, silence, refusals the dev broker cannot fake."""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest
from aiohttp import WSMsgType, web
from claudemesh_gateway.errors import MeshError, MeshTerminalError, MeshTimeout
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, MeshPeer
from claudemesh_gateway.mesh.connection import MeshRequestError
from claudemesh_gateway.mesh.crypto import KeyPair

FAST = {"backoff": [0.05], "backoff_jitter": 0.0, "hello_timeout": 0.3, "ack_timeout": 0.5, "request_timeout": 0.5,
        "ping_interval": 0.1, "idle_timeout": 0.4, "roster_refresh": 30, "capacity_backoff": 0.6}


class Fake:
    """A tiny broker: ``script(ws, hello)`` runs after each hello; records connections and frames."""

    def __init__(self, script) -> None:
        self.script = script
        self.hellos: list[dict] = []
        self.frames: list[dict] = []
        self.connections = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connections += 1
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            return ws
        hello = json.loads(msg.data)
        self.hellos.append(hello)
        await self.script(self, ws, hello)
        return ws

    async def serve(self, ws: web.WebSocketResponse) -> None:
        """Answer list_peers / topic_list; record everything else; ignore pings (no autoping)."""
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.frames.append(frame)
            if frame.get("type") == "list_peers":
                await ws.send_json({"type": "peers_list", "peers": [], "_reqId": frame["_reqId"]})
            elif frame.get("type") == "topic_join":
                await ws.send_json({"type": "error", "code": "topic_not_found",
                                    "message": f'topic "{frame["topic"]}" not found', "id": frame.get("_reqId")})
            elif frame.get("type") == "topic_members":
                await ws.send_json({"type": "error", "code": "topic_not_found",
                                    "message": f'topic "{frame["topic"]}" not found', "id": frame["_reqId"]})


@pytest.fixture
async def fake_peer(aiohttp_server):
    peers = []

    async def make(script, **over):
        fake = Fake(script)
        app = web.Application()
        app.router.add_get("/ws", fake.handler)
        server = await aiohttp_server(app)
        cfg = MeshConfig(broker_url=str(server.make_url("/ws")).replace("http://", "ws://"), mesh_id="M" * 32,
                         member_id="me", secret_key=KeyPair.generate().secret_hex,
                         root_key=secrets.token_urlsafe(32), **{**FAST, **over})
        peer = MeshPeer("fake", cfg, kv=MemoryKV())
        peers.append(peer)
        await peer.start()
        return fake, peer

    yield make
    for p in peers:
        await asyncio.wait_for(p.stop(), 5)


async def _ack(ws, presence="P" * 32):
    await ws.send_json({"type": "hello_ack", "presenceId": presence})


async def test_garbage_and_unknown_frames_do_not_disturb_the_peer(fake_peer):
    async def script(fake, ws, hello):
        await ws.send_str("this is not json")
        await ws.send_str("[1, 2, 3]")
        await ws.send_json({"no": "type"})
        await ws.send_json({"type": "push", "messageId": "x"})  # no push before the ack matters
        await _ack(ws)
        await ws.send_json({"type": "totally_new_verb", "data": 1})
        await ws.send_bytes(b"\xff\xfe")
        await ws.send_json({"type": "push"})  # malformed push
        await ws.send_json({"type": "push", "messageId": "m1", "senderPubkey": "ab" * 32, "nonce": "!!",
                            "ciphertext": "!!", "senderName": "x"})  # undecryptable
        await ws.send_json({"type": "ack", "id": "nobody-waits"})
        await fake.serve(ws)

    fake, peer = await fake_peer(script)
    await peer.wait_connected(3)
    assert await peer.peers(refresh=True) == []
    await asyncio.sleep(0.2)
    assert peer.state == "connected" and fake.connections == 1
    assert fake.hellos[0]["type"] == "session_hello" and fake.hellos[0]["cwd"] == "/srv/claudemesh-gateway"
    # the undecryptable push was acked (camelCase), never shown
    acks = [f for f in fake.frames if f["type"] == "client_ack"]
    assert acks == [{"type": "client_ack", "brokerMessageId": "m1"}]


async def test_error_reply_correlated_by_id(fake_peer):
    async def script(fake, ws, hello):
        await _ack(ws)
        await fake.serve(ws)

    _, peer = await fake_peer(script)
    await peer.wait_connected(3)
    with pytest.raises(MeshRequestError, match="topic_not_found"):
        await peer.connection.request({"type": "topic_members", "topic": "nope"})


async def test_hello_timeout_reconnects(fake_peer):
    async def script(fake, ws, hello):
        await fake.serve(ws)  # never acks

    fake, peer = await fake_peer(script)
    with pytest.raises(MeshTimeout, match="hello not acknowledged"):
        await peer.wait_connected(1.0)
    assert fake.connections >= 2 and peer.state in ("backoff", "connecting")


async def test_idle_watchdog_reconnects_a_silent_socket(fake_peer):
    async def script(fake, ws, hello):
        await _ack(ws)
        if fake.connections == 1:
            await asyncio.sleep(5)  # silent: no pong, nothing; our watchdog must give up first
        await fake.serve(ws)

    fake, peer = await fake_peer(script)
    await peer.wait_connected(3)
    for _ in range(60):
        if fake.connections >= 2 and peer.state == "connected":
            break
        await asyncio.sleep(0.05)
    assert fake.connections >= 2 and peer.state == "connected"


async def test_ping_is_answered_and_pong_keeps_alive(fake_peer):
    pongs = []

    async def script(fake, ws, hello):
        await _ack(ws)
        for _ in range(6):  # 6 x 0.1 s > idle_timeout 0.4 s, but each ping/pong counts as traffic
            await ws.ping(b"hb")
            msg = await ws.receive()
            if msg.type == WSMsgType.PONG:
                pongs.append(msg.data)
            await asyncio.sleep(0.1)
        await fake.serve(ws)

    fake, peer = await fake_peer(script, idle_timeout=0.8)
    await peer.wait_connected(3)
    await asyncio.sleep(0.8)
    assert b"hb" in pongs and fake.connections == 1


async def test_capacity_backs_off_at_least_the_configured_time(fake_peer):
    async def script(fake, ws, hello):
        if fake.connections == 1:
            await ws.send_json({"type": "error", "code": "capacity", "message": "mesh at connection capacity"})
            await ws.close(code=1008, message=b"capacity")
            return
        await _ack(ws)
        await fake.serve(ws)

    fake, peer = await fake_peer(script)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await peer.wait_connected(3)
    assert loop.time() - t0 >= 0.55 and fake.connections == 2


async def test_attestation_rejection_is_reminted_once_then_terminal(fake_peer):
    async def script(fake, ws, hello):
        await ws.send_json({"type": "error", "code": "expired", "message": "attestation rejected: expired"})
        await ws.close(code=1008, message=b"expired")

    fake, peer = await fake_peer(script)
    with pytest.raises(MeshTerminalError) as ei:
        await peer.wait_connected(3)
    assert fake.connections == 2 and ei.value.code == "expired"
    # each connect carried a freshly minted attestation with a 12 h TTL
    a1, a2 = (h["parentAttestation"] for h in fake.hellos)
    assert a1["expiresAt"] - fake.hellos[0]["timestamp"] == 12 * 3600 * 1000
    assert a2["expiresAt"] >= a1["expiresAt"]


@pytest.mark.parametrize("code,reason,expect", [(4001, "kicked", "kicked"), (4002, "banned", "banned"),
                                                 (1000, "session_replaced", "session_replaced")])
async def test_terminal_closes(fake_peer, code, reason, expect):
    async def script(fake, ws, hello):
        await _ack(ws)
        await asyncio.sleep(0.05)
        await ws.close(code=code, message=reason.encode())

    fake, peer = await fake_peer(script)
    for _ in range(60):
        if peer.state == "terminal":
            break
        await asyncio.sleep(0.05)
    assert peer.state == "terminal" and peer.connection.terminal_error.code == expect
    with pytest.raises(MeshTerminalError):
        await peer.wait_connected(0.1)
    assert fake.connections == 1


async def test_plain_close_reconnects(fake_peer):
    async def script(fake, ws, hello):
        await _ack(ws)
        if fake.connections == 1:
            await ws.close(code=1001, message=b"shutting down")
            return
        await fake.serve(ws)

    fake, peer = await fake_peer(script)
    for _ in range(60):
        if fake.connections >= 2 and peer.state == "connected":
            break
        await asyncio.sleep(0.05)
    assert fake.connections == 2 and peer.state == "connected" and peer.reconnects == 1


async def test_requests_fail_fast_when_stopped(fake_peer):
    async def script(fake, ws, hello):
        await _ack(ws)
        await fake.serve(ws)

    _, peer = await fake_peer(script)
    await peer.wait_connected(3)
    await peer.stop()
    with pytest.raises(MeshError, match="stopped"):
        await peer.connection.request({"type": "list_peers"})


async def test_send_without_ack_is_retried_once_with_the_same_id_then_fails(fake_peer):
    async def script(fake, ws, hello):
        await _ack(ws)
        async for msg in ws:
            frame = json.loads(msg.data)
            fake.frames.append(frame)
            sends = [f for f in fake.frames if f.get("type") == "send"]
            if frame.get("type") == "send" and frame["ciphertext"] != "c2VsZG9t" and len(sends) == 2:
                await ws.send_json({"type": "ack", "id": frame["id"], "messageId": "Q" * 32, "queued": True})

    fake, peer = await fake_peer(script, idle_timeout=10, ping_interval=5)
    await peer.wait_connected(3)
    qid = await peer.broadcast("hello")
    sends = [f for f in fake.frames if f.get("type") == "send"]
    assert qid == "Q" * 32 and len(sends) == 2 and sends[0]["id"] == sends[1]["id"]
    assert sends[0]["client_message_id"] == sends[0]["id"] and sends[0]["priority"] == "next"
    from claudemesh_gateway.errors import DeliveryError

    with pytest.raises(DeliveryError, match="no ack") as ei:
        await peer.broadcast("seldom")  # base64 "c2VsZG9t": never acked
    assert not ei.value.permanent
    assert len([f for f in fake.frames if f.get("ciphertext") == "c2VsZG9t"]) == 2


async def test_push_before_hello_ack_is_delivered_and_acked_after_the_ack(aiohttp_server):
    got = []

    async def script(fake, ws, hello):
        await ws.send_json({"type": "push", "messageId": "early", "senderPubkey": "ab" * 32, "nonce": "",
                            "ciphertext": "aGk=", "senderName": "x", "priority": "next",
                            "createdAt": "2026-01-01T00:00:00.000Z"})
        await asyncio.sleep(0.3)  # the ack comes late; nothing may be sent before it
        await _ack(ws)
        await fake.serve(ws)

    fake = Fake(script)
    app = web.Application()
    app.router.add_get("/ws", fake.handler)
    server = await aiohttp_server(app)
    cfg = MeshConfig(broker_url=str(server.make_url("/ws")).replace("http://", "ws://"), mesh_id="M" * 32,
                     member_id="me", secret_key=KeyPair.generate().secret_hex, **{**FAST, "hello_timeout": 2.0})

    async def on_message(item):
        got.append((item.text, item.kind))

    peer = MeshPeer("fake", cfg, kv=MemoryKV(), on_message=on_message)
    await peer.start()
    try:
        await peer.wait_connected(3)
        for _ in range(40):
            if any(f.get("type") == "client_ack" for f in fake.frames):
                break
            await asyncio.sleep(0.05)
        assert got == [("hi", "broadcast")]
        assert [f for f in fake.frames if f.get("type") == "client_ack"] == [
            {"type": "client_ack", "brokerMessageId": "early"}]
    finally:
        await peer.stop()
