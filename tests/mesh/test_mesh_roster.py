"""Roster: list_peers, name resolution (case-insensitive, session peers preferred, ambiguity refused), tags."""

from __future__ import annotations

import pytest
from claudemesh_gateway.mesh.roster import AmbiguousPeer, PeerNotFound


async def test_resolve_by_name_and_pubkey(broker, make_peer):
    seed = broker.default_mesh
    gw = await make_peer(seed.gateway)
    alice = await make_peer(seed.alice)
    found = await gw.resolve_peer("@ALICE")
    assert found.pubkey == alice.session_pubkey and found.member_pubkey == seed.alice.pubkey
    assert found.peer_role == "session"
    assert (await gw.resolve_peer(alice.session_pubkey.upper())).display_name == "alice"
    assert (await gw.resolve_peer(seed.alice.pubkey)).pubkey == alice.session_pubkey  # member pk -> live session
    with pytest.raises(PeerNotFound, match="no peer named 'carol'"):
        await gw.resolve_peer("carol")
    with pytest.raises(LookupError):
        await gw.resolve_peer("gateway")  # ourselves is not a DM target by name


async def test_session_peer_preferred_and_ambiguity_refused(broker, make_peer):
    async def roster_has(peer, key):
        return any(p.pubkey == key for p in await peer.peers(refresh=True))

    seed = broker.default_mesh
    gw = await make_peer(seed.gateway)
    carol = broker.add_member(seed.mesh_id, "carol")
    dave = broker.add_member(seed.mesh_id, "dave")
    control = await make_peer(carol, handshake="member", display_name="Ops")  # control-plane presence
    session = await make_peer(dave, display_name="ops")
    assert await roster_has(gw, session.session_pubkey) and await roster_has(gw, control.session_pubkey)
    found = await gw.resolve_peer("OPS")
    assert found.pubkey == session.session_pubkey and found.peer_role == "session"
    erin = broker.add_member(seed.mesh_id, "erin")
    third = await make_peer(erin, display_name="OPS")
    assert await roster_has(gw, third.session_pubkey)
    with pytest.raises(AmbiguousPeer, match="2 peers are named 'ops'.*full pubkey"):
        await gw.resolve_peer("ops")


async def test_peers_with_tag_and_presence_events_refresh(broker, make_peer, eventually):
    seed = broker.default_mesh
    gw = await make_peer(seed.gateway, roster_refresh=60)  # only presence events can refresh it in time
    await gw.peers(refresh=True)
    billing = broker.add_member(seed.mesh_id, "frank")
    frank = await make_peer(billing, groups=["repo:billing", {"name": "oncall", "role": "lead"}])
    await eventually(lambda: any(p.pubkey == frank.session_pubkey for p in gw.roster.cached))
    tagged = await gw.peers_with_tag("repo:billing")
    assert [p.pubkey for p in tagged] == [frank.session_pubkey]
    assert [p.display_name for p in await gw.peers_with_tag("@OnCall")] == ["frank"]
    assert await gw.peers_with_tag("nobody-has-this") == []
    me = [p for p in await gw.peers(refresh=True) if p.is_self]
    assert [p.pubkey for p in me] == [gw.session_pubkey]
