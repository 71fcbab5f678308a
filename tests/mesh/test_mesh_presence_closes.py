"""Later upstream broker closes (issue 18): 4004 presence_evicted and 4005 no_presence reconnect with a
log line naming the cause, and so does a ``no_hello`` on a connected socket (the broker lost our presence).
Scripted against a fake broker, then end to end against the dev broker that models them."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import pytest
from aiohttp import WSMsgType, web
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, MeshPeer
from claudemesh_gateway.mesh.connection import ConnectionLost
from claudemesh_gateway.mesh.crypto import KeyPair

FAST = {"backoff": [0.05], "backoff_jitter": 0.0, "hello_timeout": 1.0, "ack_timeout": 1.0, "request_timeout": 2.0,
        "ping_interval": 5.0, "idle_timeout": 30.0, "roster_refresh": 300}
LOGGER = "claudemesh_gateway.mesh.connection"


class Fake:
    """Acks each hello with a fresh presence id, runs ``script(ws, n)``, then answers list_peers."""

    def __init__(self, script) -> None:
        self.script = script
        self.connections = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        n = self.connections
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            return ws
        await ws.send_json({"type": "hello_ack", "presenceId": f"{n:032d}"})
        if await self.script(ws, n) == "closed":
            return ws
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and json.loads(msg.data).get("type") == "list_peers":
                await ws.send_json({"type": "peers_list", "peers": [], "_reqId": json.loads(msg.data)["_reqId"]})
        return ws


@pytest.fixture
async def fake_peer(aiohttp_server):
    peers: list[MeshPeer] = []

    async def make(script):
        fake = Fake(script)
        app = web.Application()
        app.router.add_get("/ws", fake.handler)
        server = await aiohttp_server(app)
        cfg = MeshConfig(broker_url=str(server.make_url("/ws")).replace("http://", "ws://"), mesh_id="M" * 32,
                         member_id="me", secret_key=KeyPair.generate().secret_hex,
                         root_key=secrets.token_urlsafe(32), **FAST)
        peer = MeshPeer("fake", cfg, kv=MemoryKV())
        peers.append(peer)
        await peer.start()
        return fake, peer

    yield make
    for p in peers:
        await asyncio.wait_for(p.stop(), 5)


async def _until(pred, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _lines(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.WARNING and needle in r.getMessage()]


@pytest.mark.parametrize("code,reason,cause", [(4004, "presence_evicted", "evicted our presence"),
                                               (4005, "no_presence", "no presence for this socket")])
async def test_presence_lost_close_reconnects_and_names_the_cause(fake_peer, caplog, code, reason, cause):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def script(ws, n):
        if n == 1:
            await asyncio.sleep(0.1)
            await ws.close(code=code, message=reason.encode())
            return "closed"
        return None

    fake, peer = await fake_peer(script)
    await _until(lambda: fake.connections == 2 and peer.state == "connected")
    lines = _lines(caplog, f"{code} {reason}")
    assert len(lines) == 1 and cause in lines[0] and "reconnecting" in lines[0]
    assert peer.connection.terminal_error is None and peer.reconnects == 1
    assert peer.presence_id == f"{2:032d}"
    assert await peer.peers(refresh=True) == []


async def test_the_reason_alone_is_recognised(fake_peer, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def script(ws, n):
        if n == 1:
            await asyncio.sleep(0.1)
            await ws.close(code=1000, message=b"presence_evicted")
            return "closed"
        return None

    fake, peer = await fake_peer(script)
    await _until(lambda: fake.connections == 2 and peer.state == "connected")
    assert len(_lines(caplog, "1000 presence_evicted")) == 1


async def test_no_hello_on_a_connected_socket_reconnects(fake_peer, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def script(ws, n):
        if n == 1:  # a zombie: every verb gets no_hello and the socket is never closed by the broker
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    for _ in range(3):
                        await ws.send_json({"type": "error", "code": "no_hello", "message": "must send hello first"})
            return "closed"
        return None

    fake, peer = await fake_peer(script)
    await peer.wait_connected(3)
    with pytest.raises(ConnectionLost):
        await peer.connection.request({"type": "list_peers"})
    await _until(lambda: fake.connections == 2 and peer.state == "connected")
    assert len(_lines(caplog, "no_hello")) == 1            # three no_hello frames, one line
    assert await peer.peers(refresh=True) == []


# -- end to end against the dev broker -------------------------------------------------------------

async def test_devbroker_4004_evicted_presence_reconnects_with_a_new_one(broker, make_peer, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    seed = broker.default_mesh
    peer = await make_peer(seed.gateway, roster_refresh=300)
    first = peer.presence_id
    entry = broker.registry.entries[first]
    entry.last_pong_at = entry.last_ping_at = entry.last_pong_at - 10 * 60 * 1000   # its pongs went missing
    await broker.keepalive_tick()
    await _until(lambda: peer.state == "connected" and peer.presence_id not in (None, first))
    assert len(_lines(caplog, "4004 presence_evicted")) == 1
    assert first not in broker.registry.entries and peer.presence_id in broker.registry.entries
    assert peer.reconnects == 1
    assert peer.session_pubkey in {p.pubkey for p in await peer.peers(refresh=True)}


async def test_devbroker_4005_zombie_socket_reconnects(broker, make_peer, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker.config.zombie_min_age_s = 0
    seed = broker.default_mesh
    peer = await make_peer(seed.gateway, roster_refresh=300)
    first = peer.presence_id
    assert broker.orphan_presences(seed.mesh_id, pubkey=peer.session_pubkey) == 1
    await broker.keepalive_tick()
    await _until(lambda: peer.state == "connected" and peer.presence_id not in (None, first))
    assert len(_lines(caplog, "4005 no_presence")) == 1
    assert peer.presence_id in broker.registry.entries and peer.reconnects == 1


async def test_devbroker_zombie_found_by_no_hello_before_the_sweep(broker, make_peer, caplog):
    """A pinned-commit broker never closes a zombie: the peer notices on its next verb."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker.config.zombie_min_age_s = None
    seed = broker.default_mesh
    peer = await make_peer(seed.gateway, roster_refresh=300)
    first = peer.presence_id
    broker.orphan_presences(seed.mesh_id, pubkey=peer.session_pubkey)
    with pytest.raises(ConnectionLost):
        await peer.connection.request({"type": "list_peers"})
    await _until(lambda: peer.state == "connected" and peer.presence_id not in (None, first))
    assert len(_lines(caplog, "no_hello on a connected socket")) == 1
    assert peer.session_pubkey in {p.pubkey for p in await peer.peers(refresh=True)}   # visible again
