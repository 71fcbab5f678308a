"""Handshake refusals: each gives a clear terminal error or an explicit retrying state."""

from __future__ import annotations

import time

import pytest
from claudemesh_gateway.errors import MeshTerminalError, MeshTimeout
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


async def test_skewed_clock_retries_with_explicit_message(broker, make_peer, eventually):
    states = []
    peer = await make_peer(broker.default_mesh.gateway, connect=False, clock=lambda: time.time() + 3600,
                           backoff=[0.1])
    peer.on_state = lambda s, d: states.append((s, d))
    with pytest.raises(MeshTimeout, match="clock skew: fix the system clock"):
        await peer.wait_connected(0.5)
    assert peer.state in ("backoff", "connecting") and peer.connection.terminal_error is None
    await eventually(lambda: any(s == "backoff" and "clock skew" in d for s, d in states))
    assert peer.reconnects >= 1


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
