"""Part B registry, leases and closes: B.12–B.20."""

from __future__ import annotations

import asyncio

from claudemesh_gateway.mesh.crypto import KeyPair


async def _until(pred, wait: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def _entry(broker, session_id):
    return next((p for p in broker.presences() if p["sessionId"] == session_id), None)


async def test_b12_closed_socket_leaves_offline_lease(make_broker, connect):
    b = await make_broker(grace_s=30)
    seed = b.default_mesh
    gw = await connect(b, seed.gateway, mode="hello", groups=[{"name": "ops"}])
    bob = await connect(b, seed.bob)
    await gw.send({"type": "set_summary", "summary": "bridging"})
    await gw.request({"type": "list_peers"}, "peers_list")
    await gw.close()
    await _until(lambda: _entry(b, gw.session_id)["lease"] == "offline")
    state = b.store.peer_states[(seed.mesh_id, seed.gateway.member_id)]
    assert state.summary == "bridging" and state.groups == [{"name": "ops"}]
    assert b.mesh_count(seed.mesh_id) == 2                      # still counts against capacity
    peers = (await bob.request({"type": "list_peers"}, "peers_list"))["peers"]
    assert seed.gateway.pubkey in {p["pubkey"] for p in peers}   # still listed
    ack = await bob.dm(seed.gateway.pubkey, "to the lease")     # still a DM candidate
    assert ack["queued"] is True
    row = next(r for r in b.queue_rows() if r.id == ack["messageId"])
    assert row.claim_id == gw.ack["presenceId"] and row.delivered_at is None   # claimed for the dead socket


async def test_b13_eviction_after_grace_sends_peer_left(make_broker, connect):
    b = await make_broker(grace_s=0.3)
    seed = b.default_mesh
    alice_a = await connect(b, seed.alice)
    alice_b = await connect(b, seed.alice)
    bob = await connect(b, seed.bob)
    assert b.mesh_count(seed.mesh_id) == 3
    await alice_a.close()
    ev = await bob.recv_event("peer_left", wait=3)
    assert ev["eventData"] == {"name": "alice", "pubkey": alice_a.session.public_hex}
    assert b.mesh_count(seed.mesh_id) == 2
    assert _entry(b, alice_a.session_id) is None
    assert [f for f in await alice_b.quiet() if f.get("event") == "peer_left"] == []   # same member: nothing
    peers = (await bob.request({"type": "list_peers"}, "peers_list"))["peers"]
    assert alice_a.session.public_hex not in {p["pubkey"] for p in peers}


async def test_b14_hello_reattaches_offline_lease(make_broker, connect, raw_ws, mk):
    b = await make_broker(grace_s=30)
    seed = b.default_mesh
    bob = await connect(b, seed.bob)
    session = KeyPair.generate()
    gw = await connect(b, seed.gateway, mode="hello", session=session, session_id="gw-1")
    await bob.recv_event("peer_joined")
    assert b.drop_connections(seed.mesh_id, pubkey=session.public_hex) == 1   # network failure
    await _until(lambda: _entry(b, "gw-1")["lease"] == "offline")
    ack = await bob.dm(session.public_hex, "while you were away")
    again = await connect(b, seed.gateway, mode="hello", session=session, session_id="gw-2", cwd="/new")
    assert again.ack["presenceId"] == gw.ack["presenceId"]
    assert "restored" not in again.ack and again.ack["services"] == []
    assert [f["messageId"] for f in again.backlog if f["type"] == "push"] == []  # claimed for the dead socket
    assert _entry(b, "gw-1")["lease"] == "online"      # the entry keeps its sessionId; cwd updated
    assert b.registry.entries[again.ack["presenceId"]].cwd == "/new"
    assert [f for f in await bob.quiet() if f.get("subtype") == "system"] == []   # no join event
    assert b.mesh_count(seed.mesh_id) == 2
    # (b) no sessionPubkey: same sessionId + member pubkey matches an offline lease
    plain = await connect(b, seed.alice, mode="hello", session_id="alice-cp")
    await plain.close()
    await _until(lambda: _entry(b, "alice-cp")["lease"] == "offline")
    back = await connect(b, seed.alice, mode="hello", session_id="alice-cp")
    assert back.ack["presenceId"] == plain.ack["presenceId"]
    # an ONLINE entry is not reattached by hello: sessionId dedup replaces it instead
    third = await connect(b, seed.alice, mode="hello", session_id="alice-cp")
    assert third.ack["presenceId"] != back.ack["presenceId"]
    assert await back.wait_closed() == (1000, "session_replaced")
    assert ack["queued"] is True


async def test_b15_session_hello_reattach_online_or_offline(make_broker, connect):
    b = await make_broker(grace_s=30)
    seed = b.default_mesh
    bob = await connect(b, seed.bob)
    s = KeyPair.generate()
    first = await connect(b, seed.gateway, session=s, session_id="a")
    await bob.recv_event("peer_joined")
    second = await connect(b, seed.gateway, session=s, session_id="b", displayName="gw2")
    assert await first.wait_closed() == (1000, "session_replaced")
    assert second.ack["presenceId"] == first.ack["presenceId"]
    assert "memberProfile" not in second.ack
    entry = b.registry.entries[second.ack["presenceId"]]
    assert (entry.session_id, entry.display_name, entry.lease) == ("b", "gw2", "online")
    assert [f for f in await bob.quiet() if f.get("subtype") == "system"] == []
    assert b.mesh_count(seed.mesh_id) == 2
    await second.close()                       # offline lease, then reattach again
    await _until(lambda: entry.lease == "offline")
    third = await connect(b, seed.gateway, session=s, session_id="c")
    assert third.ack["presenceId"] == first.ack["presenceId"] and entry.lease == "online"


async def test_b16_new_identity_during_grace_is_a_ghost(make_broker, connect):
    b = await make_broker(grace_s=0.6, claim_s=0.2)
    seed = b.default_mesh
    bob = await connect(b, seed.bob)
    old = await connect(b, seed.alice)
    b.drop_connections(seed.mesh_id, pubkey=old.session.public_hex)
    await _until(lambda: _entry(b, old.session_id)["lease"] == "offline")
    new = await connect(b, seed.alice)            # new session key inside grace: a second presence (ghost)
    entries = [p for p in b.presences(seed.mesh_id) if p["memberId"] == seed.alice.member_id]
    assert len(entries) == 2
    first = await bob.dm(seed.alice.pubkey, "who gets me?")
    assert first["queued"] is True
    assert await new.pushes() == []    # the ghost claimed it
    row = next(r for r in b.queue_rows() if r.id == first["messageId"])
    assert row.claim_id == old.ack["presenceId"]
    await _until(lambda: _entry(b, old.session_id) is None)                  # ghost evicted, claim expired
    await asyncio.sleep(0.25)
    second = await bob.dm(seed.alice.pubkey, "again")
    got = await new.expect_pushes(2)
    assert got == [first["messageId"], second["messageId"]]


async def test_b17_session_id_dedup_leaks_a_slot(broker, connect):
    seed = broker.default_mesh
    bob = await connect(broker, seed.bob)
    first = await connect(broker, seed.gateway, mode="hello", session_id="dup")
    await bob.recv_event("peer_joined")
    second = await connect(broker, seed.gateway, mode="hello", session_id="dup")
    assert await first.wait_closed() == (1000, "session_replaced")
    assert second.ack["presenceId"] != first.ack["presenceId"]
    assert [p["presenceId"] for p in broker.presences() if p["sessionId"] == "dup"] == [second.ack["presenceId"]]
    assert broker.mesh_count(seed.mesh_id) == 3        # 2 presences, one leaked slot
    events = [(f["event"], f["eventData"]["name"]) for f in await bob.quiet() if f.get("subtype") == "system"]
    assert events == [("peer_joined", "gateway")]          # the new presence joins; no peer_left for the old


async def test_b18_capacity_counts_leases_and_leaks(make_broker, connect, raw_ws, mk):
    b = await make_broker(max_connections_per_mesh=2, grace_s=0.3)
    seed = b.default_mesh
    a = await connect(b, seed.alice)
    g = await connect(b, seed.gateway)
    await a.close()                                       # offline lease still counts
    await _until(lambda: _entry(b, a.session_id)["lease"] == "offline")
    c = await raw_ws(b)
    await c.send(mk.session_hello(seed.mesh_id, seed.bob, KeyPair.generate()))
    assert (await c.recv())["code"] == "capacity"
    await _until(lambda: b.mesh_count(seed.mesh_id) == 1)  # eviction gives the slot back
    bob = await connect(b, seed.bob)
    # capacity is full again (gateway + bob)
    await g.send({"type": "list_peers"})
    assert b.mesh_count(seed.mesh_id) == 2 and bob.ack["type"] == "hello_ack"
    dup = await raw_ws(b)
    await dup.send(mk.session_hello(seed.mesh_id, seed.bob, KeyPair.generate(), session_id=bob.session_id))
    assert (await dup.recv())["code"] == "capacity"       # capacity is checked before dedup


async def test_b19_admin_verbs(make_broker, connect, raw_ws, mk):
    b = await make_broker(grace_s=30)
    seed = b.default_mesh
    admin = await connect(b, seed.alice)                     # alice is an admin of the dev mesh
    bob = await connect(b, seed.bob)
    gw = await connect(b, seed.gateway, mode="hello")
    err = await bob.request({"type": "kick", "target": "alice", "_reqId": "k"}, "error")
    assert (err["code"], err["message"], err["_reqId"]) == ("forbidden", "only owner or admin can kicked", "k")
    err = await bob.request({"type": "disconnect", "all": True}, "error")
    assert err["message"] == "only owner or admin can disconnected"
    count = b.mesh_count(seed.mesh_id)
    ack = await admin.request({"type": "kick", "all": True, "_reqId": "k1"}, "kick_ack")
    assert ack == {"type": "kick_ack", "kicked": ["bob"], "affected": 1, "skipped_control_plane": 1, "_reqId": "k1"}
    assert await bob.wait_closed() == (4001, "kicked")
    ack = await admin.request({"type": "disconnect", "target": "gateway", "_reqId": "d1"}, "disconnect_ack")
    assert (ack["kicked"], ack["affected"], ack["_reqId"]) == (["gateway"], 1, "d1")
    assert await gw.wait_closed() == (1000, "disconnected")
    assert b.mesh_count(seed.mesh_id) == count             # no decrement: leaked slots
    assert [f for f in await admin.quiet() if f.get("event") == "peer_left"] == []
    # stale disconnect hits offline leases
    bob2 = await connect(b, seed.bob)
    await bob2.close()
    await _until(lambda: _entry(b, bob2.session_id)["lease"] == "offline")
    ack = await admin.request({"type": "disconnect", "stale": True}, "disconnect_ack")
    assert ack["kicked"] == ["bob"] and _entry(b, bob2.session_id) is None
    live = await connect(b, seed.bob)
    bob3 = await connect(b, seed.bob, mode="hello")
    ack = await admin.request({"type": "ban", "target": "bob", "_reqId": "b"}, "ban_ack")
    assert ack["affected"] == 2 and ack["memberId"] == seed.bob.member_id
    assert await live.wait_closed() == (4002, "banned")
    assert await bob3.wait_closed() == (4002, "banned")
    c = await raw_ws(b)
    await c.send(mk.hello(seed.mesh_id, seed.bob))
    assert (await c.recv())["code"] == "revoked"
    await b.stop()                                          # shutdown: 1001 shutting down
    assert await admin.wait_closed() == (1001, "shutting down")


async def test_b20_keepalive_terminates_silent_sockets(make_broker, connect):
    b = await make_broker(pong_timeout_s=2.0, stale_presence_s=30)
    seed = b.default_mesh
    good = await connect(b, seed.alice)
    silent = await connect(b, seed.bob, autoping=False)
    await b.keepalive_tick()                        # pings both
    await good.quiet(1.2)                           # good reads, so its client answers the ping
    await silent.ws.ping()                          # client pings refresh nothing
    await b.keepalive_tick()
    await good.quiet(1.2)
    await b.keepalive_tick()                        # silent's last pong is > 2 s old: terminated
    code, _ = await silent.wait_closed()
    assert code == 1006                            # no close frame
    await _until(lambda: _entry(b, silent.session_id)["lease"] == "offline")   # grace started
    assert _entry(b, good.session_id)["lease"] == "online"
    assert not good.ws.closed
    # rows whose last_ping_at is older than the stale window are hidden from list_peers; reattach restores
    b.config.stale_presence_s = 0.01
    await asyncio.sleep(0.05)
    b.registry.entries[good.ack["presenceId"]].last_pong_at = 10**13   # keep good alive through this tick
    await b.keepalive_tick()
    peers = (await good.request({"type": "list_peers"}, "peers_list"))["peers"]
    assert silent.session.public_hex not in {p["pubkey"] for p in peers}
    back = await connect(b, seed.bob, session=silent.session)
    peers = (await good.request({"type": "list_peers"}, "peers_list"))["peers"]
    assert back.ack["presenceId"] == silent.ack["presenceId"]
    assert silent.session.public_hex in {p["pubkey"] for p in peers}
