"""Part B drains and delivery: B.30–B.38."""

from __future__ import annotations

import asyncio

from claudemesh_gateway.devbroker import QueueRow
from claudemesh_gateway.devbroker.util import iso
from claudemesh_gateway.mesh import crypto


def _row(broker, target: str, *, sender, priority: str = "next", created_at: int, rid: str) -> QueueRow:
    row = QueueRow(id=rid, mesh_id=sender.mesh_id, target_spec=target, priority=priority,
                   nonce=crypto.b64(bytes(24)), ciphertext=crypto.v1_encode(rid), sender_member_id=sender.member_id,
                   sender_session_pubkey=None, created_at=created_at)
    broker.store.queue.append(row)
    return row


async def _until(pred, wait: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def _ids(frames) -> list[str]:
    return [f["messageId"] for f in frames]


async def test_b30_drain_triggers_only(make_broker, connect, http):
    broker = await make_broker(grace_s=30)
    seed = broker.default_mesh
    bob = await connect(broker, seed.bob)
    alice = await connect(broker, seed.alice, session_id="alice-s")
    broker.set_status(seed.alice.pubkey, "working")
    held = await bob.dm(alice.session.public_hex, "held", priority="next")
    assert await alice.pushes() == []                      # working: next waits
    broker.set_status(seed.alice.pubkey, "idle")
    broker.sweep_claims()
    await asyncio.sleep(0.3)
    assert await alice.pushes() == []                      # no periodic drain, no retry timer
    # POST /hook/set-status is a trigger
    resp = await http.post(broker.http_url + "/hook/set-status", json={"status": "idle", "session_id": "alice-s"})
    assert (await resp.json()) == {"ok": True, "matched": 1}
    assert await alice.expect_pushes(1) == [held["messageId"]]
    # a matching direct send is a trigger (and re-drains rows whose claim expired unacked)
    await asyncio.sleep(0.45)
    nxt = await bob.dm(alice.session.public_hex, "next one")
    assert await alice.expect_pushes(2) == [held["messageId"], nxt["messageId"]]
    for mid in (held["messageId"], nxt["messageId"]):
        await alice.send({"type": "client_ack", "brokerMessageId": mid})
    # a reattach is a trigger
    await alice.close()
    await asyncio.sleep(0.1)
    late = await bob.dm(seed.alice.pubkey, "while reconnecting")
    await asyncio.sleep(0.45)                               # the offline lease's claim expires
    back = await connect(broker, seed.alice, session=alice.session)
    assert back.ack["presenceId"] == alice.ack["presenceId"]
    assert await back.expect_pushes(1) == [late["messageId"]]
    # a new hello is a trigger (covered with ordering in B.9): a second session drains the member's rows
    again = await bob.dm(seed.alice.pubkey, "to the member")
    await back.pushes()
    await asyncio.sleep(0.45)
    other = await connect(broker, seed.alice)
    assert again["messageId"] in await other.expect_pushes(1)


async def test_b31_selection_priority_targets_and_order(make_broker, connect):
    broker = await make_broker(claim_s=30)
    seed = broker.default_mesh
    bob = await connect(broker, seed.bob)
    alice = await connect(broker, seed.alice)
    await alice.send({"type": "set_status", "status": "dnd"})         # dnd sticks
    await alice.request({"type": "list_peers"}, "peers_list")
    acks = {}
    for prio in ("low", "next", "now"):
        acks[prio] = await bob.dm(alice.session.public_hex, prio, priority=prio)
        await asyncio.sleep(0.003)                                    # distinct created_at (ties sort by id)
    assert await alice.expect_pushes(1) == [acks["now"]["messageId"]]
    await alice.send({"type": "client_ack", "brokerMessageId": acks["now"]["messageId"]})
    await alice.send({"type": "set_status", "status": "working"})     # a manual working is overridden: idle
    trigger = await bob.dm(alice.session.public_hex, "trigger", priority="now")
    assert await alice.expect_pushes(3) == [acks["low"]["messageId"], acks["next"]["messageId"],
                                          trigger["messageId"]]        # created_at, then id
    # targets: member pk, *, session pk, @all, @group and its ancestors, #topic of the member's topics
    carol = broker.add_member(seed.mesh_id, "carol")
    t0 = 1_000
    rows = {
        "member": _row(broker, carol.pubkey, sender=seed.bob, created_at=t0 + 1, rid="r1" + "0" * 30),
        "star": _row(broker, "*", sender=seed.bob, created_at=t0 + 2, rid="r2" + "0" * 30),
        "all": _row(broker, "@all", sender=seed.bob, created_at=t0 + 3, rid="r3" + "0" * 30),
        "parent": _row(broker, "@eng", sender=seed.bob, created_at=t0 + 4, rid="r4" + "0" * 30),
        "group": _row(broker, "@eng/web", sender=seed.bob, created_at=t0 + 5, rid="r5" + "0" * 30),
        "child": _row(broker, "@eng/web/ui", sender=seed.bob, created_at=t0 + 6, rid="r6" + "0" * 30),
        "other_group": _row(broker, "@ops", sender=seed.bob, created_at=t0 + 7, rid="r7" + "0" * 30),
        "topic": _row(broker, "#" + seed.general_topic_id, sender=seed.bob, created_at=t0 + 8, rid="r8" + "0" * 30),
        "tie_b": _row(broker, carol.pubkey, sender=seed.bob, created_at=t0 + 9, rid="rB" + "0" * 30),
        "tie_a": _row(broker, carol.pubkey, sender=seed.bob, created_at=t0 + 9, rid="rA" + "0" * 30),
    }
    c = await connect(broker, carol, groups=[{"name": "eng/web"}])
    got = _ids(c.backlog)
    assert got == [rows[k].id for k in ("member", "star", "all", "parent", "group", "tie_a", "tie_b")]
    broker.join_topic(seed.mesh_id, "general", carol.member_id)
    c2 = await connect(broker, carol)
    assert _ids(c2.backlog) == [rows["topic"].id]
    c2.backlog.clear()
    # a drain triggered by a DM from a session skips * rows sent by that same session
    star = _row(broker, "*", sender=seed.bob, created_at=t0 + 20, rid="rS" + "0" * 30)
    star.sender_session_pubkey = bob.session.public_hex
    dm = await bob.dm(c2.session.public_hex, "hello carol")
    assert await c2.expect_pushes(1) == [dm["messageId"]]
    c3 = await connect(broker, carol)                  # a hello-triggered drain does take it
    assert _ids(c3.backlog) == [star.id]


async def test_b32_claims_are_disjoint_with_a_lease(broker, connect):
    seed = broker.default_mesh
    bob = await connect(broker, seed.bob)
    a1 = await connect(broker, seed.alice)
    a2 = await connect(broker, seed.alice)
    acks = [await bob.dm(seed.alice.pubkey, f"m{i}") for i in range(4)]
    got1, got2 = [], []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while len(got1) + len(got2) < 4 and loop.time() < deadline:
        got1 += _ids(await a1.pushes(0.05))
        got2 += _ids(await a2.pushes(0.05))
    assert sorted(got1 + got2) == sorted(a["messageId"] for a in acks)     # each row to exactly one drainer
    assert not set(got1) & set(got2)
    for ack in acks:
        row = next(r for r in broker.queue_rows() if r.id == ack["messageId"])
        assert row.delivered_at is None and row.claimed_at is not None
        assert row.claim_id in (a1.ack["presenceId"], a2.ack["presenceId"])
        assert row.claim_expires_at - row.claimed_at == int(broker.config.claim_s * 1000)


async def test_b33_drained_envelope(broker, connect):
    seed = broker.default_mesh
    gw = await connect(broker, seed.gateway, mode="hello")           # no sessionPubkey: member pk is the sender
    bob = await connect(broker, seed.bob)
    ack = await gw.dm(bob.session.public_hex, "hi", client_message_id="cm-9", request_fingerprint="fp")
    push = await bob.recv_push()
    assert set(push) == {"type", "messageId", "meshId", "senderPubkey", "priority", "nonce", "ciphertext",
                         "createdAt", "client_message_id", "request_fingerprint"}
    row = next(r for r in broker.queue_rows() if r.id == ack["messageId"])
    assert push["senderPubkey"] == seed.gateway.pubkey
    assert (push["client_message_id"], push["request_fingerprint"]) == ("cm-9", "fp")
    assert push["createdAt"] == iso(row.created_at)
    assert crypto.box_open(push["nonce"], push["ciphertext"], push["senderPubkey"], bob.session) == "hi"
    plain = await bob.dm(seed.gateway.pubkey, "yo")
    p2 = await gw.recv_push()
    assert p2["messageId"] == plain["messageId"] and p2["senderPubkey"] == bob.session.public_hex
    assert "client_message_id" in p2 and "request_fingerprint" not in p2


async def test_b34_one_drainer_per_topic_post(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    post = await alice.send_msg("#" + seed.general_topic_id)
    me_again = await connect(broker, seed.alice)               # the sender's own member drains it first
    assert _ids(me_again.backlog) == [post["messageId"]]
    bob = await connect(broker, seed.bob)
    gw = await connect(broker, seed.gateway)
    assert await bob.pushes() == [] and await gw.pushes() == []
    # unacked: after the claim expires, the next trigger gives it to someone else
    await asyncio.sleep(0.45)
    bob2 = await connect(broker, seed.bob)
    assert _ids(bob2.backlog) == [post["messageId"]]
    await bob2.send({"type": "client_ack", "brokerMessageId": post["messageId"]})
    await asyncio.sleep(0.45)
    gw2 = await connect(broker, seed.gateway)
    assert await gw2.pushes() == []


async def test_b35_status_computation(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    bob = await connect(broker, seed.bob)

    async def status() -> str:
        peers = (await bob.request({"type": "list_peers"}, "peers_list"))["peers"]
        return next(p["status"] for p in peers if p["pubkey"] == alice.session.public_hex)

    assert await status() == "idle"                       # no transcripts: idle
    await alice.send({"type": "set_status", "status": "working"})
    assert await status() == "idle"                       # a manual working is overridden
    await alice.send({"type": "set_status", "status": "dnd"})
    assert await status() == "dnd"                        # dnd sticks
    await alice.send({"type": "set_status", "status": "idle"})
    assert broker.set_status(alice.session.public_hex, "working") == 1   # tests may force working
    assert await status() == "working"


async def test_b36_sweeps(make_broker, connect):
    b = await make_broker(sweep_interval_s=0.1, claim_s=0.2)
    seed = b.default_mesh
    alice = await connect(b, seed.alice)
    bob = await connect(b, seed.bob)
    ack = await bob.dm(alice.session.public_hex, "x")
    row = next(r for r in b.queue_rows() if r.id == ack["messageId"])
    assert row.claim_id is not None
    await _until(lambda: row.claim_id is None)
    assert (row.claimed_at, row.claim_id, row.claim_expires_at) == (None, None, None)   # the loop cleared it
    assert await alice.expect_pushes(1) == [ack["messageId"]]                            # ...and pushed nothing more
    # undelivered rows older than the purge age go (the #name black hole included); delivered rows stay
    hole = await bob.send_msg("#general")
    old = next(r for r in b.queue_rows() if r.id == hole["messageId"])
    old.created_at -= (8 * 86400 * 1000)
    row.created_at -= (8 * 86400 * 1000)
    row.delivered_at = row.created_at
    assert b.purge_old() == 1
    ids = {r.id for r in b.queue_rows()}
    assert hole["messageId"] not in ids and ack["messageId"] in ids


async def test_b37_client_ack(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    bob = await connect(broker, seed.bob)
    a = await bob.dm(alice.session.public_hex, "one", client_message_id="c-1")
    b2 = await bob.dm(seed.alice.pubkey, "two", client_message_id="c-2")
    to_bob = await alice.dm(bob.session.public_hex, "three", client_message_id="c-3")
    rows = {r.id: r for r in broker.queue_rows()}
    await alice.send({"type": "client_ack"})                                   # neither id: nothing
    await alice.send({"type": "client_ack", "brokerMessageId": to_bob["messageId"]})   # not alice's target
    await alice.send({"type": "client_ack", "brokerMessageId": a["messageId"]})
    await alice.send({"type": "client_ack", "brokerMessageId": "nope", "clientMessageId": "c-2"})
    assert [f for f in await alice.quiet() if f.get("type") not in ("push",)] == []   # no reply
    assert rows[a["messageId"]].delivered_at is not None
    assert rows[b2["messageId"]].delivered_at is not None
    assert rows[to_bob["messageId"]].delivered_at is None
    # @/# rows: membership is not checked
    foreign = _row(broker, "@secret", sender=seed.bob, created_at=1, rid="rF" + "0" * 30)
    await alice.send({"type": "client_ack", "brokerMessageId": foreign.id})
    await alice.request({"type": "list_peers"}, "peers_list")
    assert foreign.delivered_at is not None


async def test_b38_multicast_race(broker, connect, monkeypatch):
    """A drain that runs between a broadcast's insert and its delivered_at update claims the row:
    the broadcast then arrives twice, live and drained, with the same messageId."""
    from claudemesh_gateway.devbroker import delivery
    from claudemesh_gateway.devbroker.presence import Conn

    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    bob = await connect(broker, seed.bob)
    bob_entry = broker.registry.entries[bob.ack["presenceId"]]
    real_send = Conn.send
    raced: list[str] = []

    async def send_then_race(self, frame):
        ok = await real_send(self, frame)
        if frame.get("type") == "ack" and frame.get("queued") and not raced:
            raced.append(frame["messageId"])
            await delivery.drain(broker, bob_entry)      # e.g. bob's hello or a DM trigger, interleaved
        return ok

    monkeypatch.setattr(Conn, "send", send_then_race)
    ack = await alice.send_msg("*")
    got = await bob.expect_pushes(2)
    assert got == [ack["messageId"], ack["messageId"]]
    assert next(r for r in broker.queue_rows() if r.id == ack["messageId"]).delivered_at is not None
