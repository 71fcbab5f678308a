"""Reconnects: reattach with the same presence, no ghost, redrain, stable identity, session_replaced."""

from __future__ import annotations

import asyncio

import pytest
from claudemesh_gateway.errors import MeshTerminalError
from claudemesh_gateway.mesh import MemoryKV


async def test_dropped_socket_reattaches_same_presence_without_ghost(broker, make_peer, new_inbox, eventually):
    seed = broker.default_mesh
    inbox = new_inbox()
    states = []
    gw = await make_peer(seed.gateway, on_message=inbox, post_reattach_redrain=False)
    gw.on_state = lambda s, d: states.append(s)
    alice = await make_peer(seed.alice)
    presence = gw.presence_id

    assert broker.drop_connections(pubkey=gw.session_pubkey) == 1
    await eventually(lambda: gw.connection.connects >= 2, timeout=5)
    assert gw.state == "connected" and gw.presence_id == presence and gw.reconnects >= 1
    assert "backoff" in states or "connecting" in states

    peers = await alice.peers(refresh=True)
    assert [p.pubkey for p in peers].count(gw.session_pubkey) == 1
    assert [p["sessionPubkey"] for p in broker.presences(seed.mesh_id)].count(gw.session_pubkey) == 1

    await alice.send_dm(gw.session_pubkey, "after the drop")
    await inbox.wait(1)
    assert inbox.texts == ["after the drop"]


@pytest.mark.parametrize("redrain", [True, False])
async def test_dm_claimed_during_outage_comes_back_after_redrain(broker, make_peer, new_inbox, redrain):
    """B.30: a DM drained into our dead socket returns only on a later drain trigger; the
    post-reattach redrain reconnect is that trigger."""
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox, backoff=[0.6], backoff_jitter=0,
                         post_reattach_redrain=redrain, reattach_redrain_delay=1.2)
    alice = await make_peer(seed.alice)
    presence = gw.presence_id
    broker.drop_connections(pubkey=gw.session_pubkey)
    await asyncio.sleep(0.1)
    await alice.send_dm(gw.session_pubkey, "sent during the outage")  # claimed for the dead socket
    if redrain:
        await inbox.wait(1, timeout=6)
        assert inbox.texts == ["sent during the outage"]
        assert gw.connection.connects == 3 and gw.presence_id == presence
    else:
        await asyncio.sleep(2.5)
        assert inbox.items == [] and gw.connection.connects == 2


async def test_session_identity_survives_a_restart(broker, make_peer):
    seed = broker.default_mesh
    kv = MemoryKV()
    one = await make_peer(seed.gateway, kv=kv)
    sid, spk, presence = one.session_id, one.session_pubkey, one.presence_id
    await one.stop()
    two = await make_peer(seed.gateway, kv=kv)
    assert (two.session_id, two.session_pubkey) == (sid, spk)
    assert sid.startswith("gw-") and not sid.startswith("gw-cli-")
    assert two.presence_id == presence  # the offline lease was reattached
    cli = await make_peer(seed.gateway, kv=kv, identity="cli")
    assert cli.session_id.startswith("gw-cli-") and cli.session_pubkey != spk
    assert two.state == "connected"  # a tool beside the gateway does not replace it


async def test_second_instance_with_same_identity_makes_the_first_terminal(broker, make_peer, eventually):
    seed = broker.default_mesh
    kv = MemoryKV()
    first = await make_peer(seed.gateway, kv=kv)
    second = await make_peer(seed.gateway, kv=kv)
    await eventually(lambda: first.state == "terminal")
    assert "session_replaced" in (first.last_error or "")
    assert isinstance(first.connection.terminal_error, MeshTerminalError)
    assert second.state == "connected"


async def test_peer_can_be_restarted_after_stop(broker, make_peer, new_inbox):
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox)
    sid = gw.session_id
    await gw.stop()
    assert gw.state == "stopped"
    await gw.start()
    await gw.wait_connected(5)
    assert gw.session_id == sid and gw.state == "connected"
    alice = await make_peer(seed.alice)
    await alice.send_dm(gw.session_pubkey, "after restart")
    await inbox.wait(1)
    assert inbox.texts == ["after restart"]
