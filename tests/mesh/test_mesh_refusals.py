"""Handshake refusals: each gives a clear terminal error or an explicit retrying state."""

from __future__ import annotations

import asyncio
import time

import pytest
from claudemesh_gateway.errors import MeshTerminalError
from claudemesh_gateway.mesh import connection as connection_mod
from claudemesh_gateway.mesh import handshake
from claudemesh_gateway.mesh.crypto import KeyPair


class _Stranger:
    """A member that was never added to the mesh."""

    def __init__(self, mesh_id: str) -> None:
        self.keypair = KeyPair.generate()
        self.mesh_id, self.member_id, self.display_name = mesh_id, "not-a-member", "stranger"

    @property
    def secret_hex(self) -> str:
        return self.keypair.secret_hex


@pytest.mark.parametrize("mode", ["session", "member"])
async def test_unknown_member_is_terminal_with_clear_message(broker, make_peer, mode):
    peer = await make_peer(_Stranger(broker.default_mesh.mesh_id), connect=False, handshake=mode)
    with pytest.raises(MeshTerminalError) as ei:
        await peer.wait_connected(5)
    assert ei.value.code == "unauthorized"
    assert "pubkey not found in mesh" in ei.value.human_message and "member_id/secret_key" in ei.value.human_message
    assert peer.state == "terminal" and peer.last_error == ei.value.human_message


@pytest.mark.parametrize("mode", ["session", "member"])
async def test_bad_signature_is_terminal(broker, make_peer, monkeypatch, mode):
    real = handshake.build_session_hello if mode == "session" else handshake.build_hello

    def corrupt(cfg, ident, now_ms):
        frame = real(cfg, ident, now_ms)
        frame["signature"] = ("0" if frame["signature"][0] != "0" else "1") + frame["signature"][1:]
        return frame

    monkeypatch.setattr(connection_mod, "build_session_hello" if mode == "session" else "build_hello", corrupt)
    peer = await make_peer(broker.default_mesh.gateway, connect=False, handshake=mode)
    with pytest.raises(MeshTerminalError) as ei:
        await peer.wait_connected(5)
    assert ei.value.code == "bad_signature" and "signature" in ei.value.human_message


async def test_skewed_clock_is_terminal_until_the_clock_is_fixed(broker, make_peer, monkeypatch, eventually):
    """Issue 2: a clear terminal error. Spec A.4: "skew: fix clock, retry". Both: no reconnect storm
    while the clock is wrong, and a reconnect by itself once it moved (NTP caught up)."""
    monkeypatch.setattr(connection_mod.Connection, "SKEW_CHECK", 0.05)
    skew = [3600.0]
    peer = await make_peer(broker.default_mesh.gateway, connect=False, clock=lambda: time.time() + skew[0],
                           backoff=[0.05])
    t0 = time.monotonic()
    with pytest.raises(MeshTerminalError, match="clock skew: fix the system clock") as ei:
        await peer.wait_connected(10)
    assert time.monotonic() - t0 < 5  # at once, not after the deadline
    assert ei.value.code == "timestamp_skew"
    assert peer.state == "terminal" and "reconnecting when the system clock changes" in peer.connection.detail
    attempts = peer.reconnects
    await asyncio.sleep(0.5)  # ten clock checks, with a 0.05 s backoff: no new attempt while the clock is wrong
    assert peer.reconnects == attempts
    skew[0] = 0.0  # the clock is fixed
    await eventually(lambda: peer.state == "connected")
    assert peer.connection.skew_error is None
    await peer.wait_connected(1)


async def test_revoked_member_is_terminal(broker, make_peer, eventually):
    seed = broker.default_mesh
    peer = await make_peer(seed.bob)
    broker.revoke_member(seed.mesh_id, seed.bob.member_id)
    broker.drop_connections(pubkey=seed.bob.pubkey)
    await eventually(lambda: peer.state == "terminal")
    assert peer.connection.terminal_error.code == "revoked"
    assert "removed from the mesh" in peer.last_error


async def test_stop_is_idempotent_and_final(broker, make_peer):
    peer = await make_peer(broker.default_mesh.gateway)
    await peer.stop()
    await peer.stop()
    assert peer.state == "stopped"


async def test_a_topic_poller_outlives_a_clock_skew(broker, make_peer, new_inbox, eventually):
    """A poll request that meets the skew (the socket dropped between the poller's wait and its
    request, and the broker refused the reconnect) must not end the poller: a skew is terminal
    only until the clock is fixed, and the topic must be read again after that."""
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox, topic_poll_interval=0.05, topic_poll_idle_interval=0.1)
    alice = await make_peer(seed.alice)
    poller = await gw.watch_topic("general")
    real = poller.poll_once
    hits = []

    async def skewed_once():
        if not hits:
            hits.append(1)
            raise MeshTerminalError("timestamp_skew", "clock skew: fix the system clock")
        return await real()

    poller.poll_once = skewed_once
    await eventually(lambda: hits)
    await alice.post_topic("general", "after the fix")
    await inbox.wait(1, timeout=10)
    assert inbox.texts == ["after the fix"]
    assert poller._task is not None and not poller._task.done()
