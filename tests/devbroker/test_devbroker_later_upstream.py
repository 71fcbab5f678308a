"""Later upstream broker behaviour (issue 18): role-scoped sessionId dedup, 4004 presence_evicted and
4005 no_presence. Each is on by default and can be switched back to the spec's pinned commit."""

from __future__ import annotations

import asyncio

from claudemesh_gateway.mesh.crypto import KeyPair

LONG_AGO = 10 * 60 * 1000  # ms


async def _until(pred, wait: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


async def _stays_open(c) -> bool:
    """Nothing closes ``c`` within a quiet period (``quiet`` raises if the socket closes)."""
    await c.quiet()
    return not c.ws.closed


def _ids(b, session_id):
    return sorted((p["peerRole"], p["presenceId"]) for p in b.presences() if p["sessionId"] == session_id)


# -- role-scoped dedup ---------------------------------------------------------------------------

async def test_dedup_is_scoped_by_role(broker, connect):
    seed = broker.default_mesh
    sess = await connect(broker, seed.alice, mode="session", session_id="claude-1")
    cp = await connect(broker, seed.alice, mode="hello", session_id="claude-1")
    # a control-plane and a session presence with one sessionId coexist
    assert await _stays_open(sess)
    assert _ids(broker, "claude-1") == sorted([("session", sess.ack["presenceId"]),
                                               ("control-plane", cp.ack["presenceId"])])
    # hello replaces only the control-plane one
    cp2 = await connect(broker, seed.alice, mode="hello", session_id="claude-1")
    assert await cp.wait_closed() == (1000, "session_replaced")
    assert not sess.ws.closed
    # session_hello (a new session key, so no reattach) replaces only the session one
    sess2 = await connect(broker, seed.alice, mode="session", session_id="claude-1")
    assert await sess.wait_closed() == (1000, "session_replaced")
    assert await _stays_open(cp2)
    assert _ids(broker, "claude-1") == sorted([("session", sess2.ack["presenceId"]),
                                               ("control-plane", cp2.ack["presenceId"])])


async def test_pinned_commit_dedup_crosses_roles(make_broker, connect):
    b = await make_broker(role_scoped_dedup=False)
    seed = b.default_mesh
    sess = await connect(b, seed.alice, mode="session", session_id="claude-1")
    cp = await connect(b, seed.alice, mode="hello", session_id="claude-1")
    assert await sess.wait_closed() == (1000, "session_replaced")
    await connect(b, seed.alice, mode="session", session_id="claude-1", session=KeyPair.generate())
    assert await cp.wait_closed() == (1000, "session_replaced")


# -- 4004 presence_evicted -----------------------------------------------------------------------

async def test_4004_a_split_presence_is_evicted_and_its_socket_closed(make_broker, connect):
    b = await make_broker(stale_presence_s=90, pong_timeout_s=75)
    seed = b.default_mesh
    bob = await connect(b, seed.bob)
    gw = await connect(b, seed.gateway, groups=[{"name": "ops"}])
    await bob.recv_event("peer_joined")
    entry = b.registry.entries[gw.ack["presenceId"]]
    entry.last_pong_at = entry.last_ping_at = entry.last_pong_at - LONG_AGO   # pongs stopped 10 min ago
    count = b.mesh_count(seed.mesh_id)
    await b.keepalive_tick()
    assert await gw.wait_closed() == (4004, "presence_evicted")
    assert gw.ack["presenceId"] not in b.registry.entries
    assert b.mesh_count(seed.mesh_id) == count - 1                    # the slot comes back
    left = await bob.recv_event("peer_left")
    assert left["eventData"]["pubkey"] == gw.pubkey
    # the client reconnects: a new presence, and the others hear it return
    again = await connect(b, seed.gateway, session=gw.session, session_id=gw.session_id)
    assert again.ack["presenceId"] != gw.ack["presenceId"]
    back = await bob.recv_event("peer_joined")
    assert back["eventData"]["pubkey"] == gw.pubkey


async def test_4004_spares_live_leases_and_offline_leases(make_broker, connect):
    b = await make_broker(stale_presence_s=1, pong_timeout_s=75, grace_s=30)
    seed = b.default_mesh
    live = await connect(b, seed.alice)
    entry = b.registry.entries[live.ack["presenceId"]]
    entry.last_ping_at -= LONG_AGO          # the row lags (a slow DB write), the pong clock is fresh
    offline = await connect(b, seed.bob)
    await offline.close()
    await _until(lambda: b.registry.entries[offline.ack["presenceId"]].lease == "offline")
    gone = b.registry.entries[offline.ack["presenceId"]]
    gone.last_ping_at = gone.last_pong_at = gone.last_pong_at - LONG_AGO
    await b.keepalive_tick()
    assert await _stays_open(live)
    assert entry.db_disconnected is False                 # memory is the source of truth
    assert gone.db_disconnected is True and gone.lease == "offline"   # hidden, but keeps its grace
    assert offline.ack["presenceId"] in b.registry.entries


async def test_4004_not_sent_by_the_pinned_commit(make_broker, connect):
    b = await make_broker(evict_split_presences=False, stale_presence_s=90, pong_timeout_s=75, grace_s=30)
    seed = b.default_mesh
    gw = await connect(b, seed.gateway)
    entry = b.registry.entries[gw.ack["presenceId"]]
    entry.last_pong_at = entry.last_ping_at = entry.last_pong_at - LONG_AGO
    await b.keepalive_tick()
    code, _ = await gw.wait_closed()
    assert code == 1006                                    # terminated: no close frame, grace starts
    await _until(lambda: entry.lease == "offline")
    assert entry.db_disconnected is True


# -- 4005 no_presence ----------------------------------------------------------------------------

async def test_4005_a_socket_without_presence_is_closed_once_old_enough(make_broker, raw_ws, mk):
    b = await make_broker(zombie_min_age_s=0.3)
    seed = b.default_mesh
    c = await raw_ws(b)
    await c.send(mk.hello(seed.mesh_id, seed.gateway, drop=("cwd",)))   # B.7: no presence, socket open
    assert await c.quiet(0.1) == []
    await b.keepalive_tick()                    # younger than zombie_min_age_s: may still be mid-hello
    assert await c.quiet(0.1) == [] and not c.ws.closed
    await asyncio.sleep(0.35)
    await b.keepalive_tick()
    assert await c.wait_closed() == (4005, "no_presence")


async def test_4005_closes_an_orphaned_socket(make_broker, connect):
    b = await make_broker(zombie_min_age_s=0)
    seed = b.default_mesh
    bob = await connect(b, seed.bob)
    gw = await connect(b, seed.gateway)
    assert b.orphan_presences(seed.mesh_id, pubkey=gw.session.public_hex) == 1
    assert gw.ack["presenceId"] not in b.registry.entries
    err = await gw.request({"type": "list_peers"}, "error")
    assert err["code"] == "no_hello"                    # a zombie: verbs get no_hello (B.4)
    await b.keepalive_tick()
    assert await gw.wait_closed() == (4005, "no_presence")
    assert await _stays_open(bob)  # sockets with a presence are left alone


async def test_4005_not_sent_by_the_pinned_commit(make_broker, raw_ws, mk):
    b = await make_broker(zombie_min_age_s=None)
    seed = b.default_mesh
    c = await raw_ws(b)
    await c.send(mk.hello(seed.mesh_id, seed.gateway, drop=("pid",)))
    await asyncio.sleep(0.05)
    await b.keepalive_tick()
    assert await c.quiet() == [] and not c.ws.closed
