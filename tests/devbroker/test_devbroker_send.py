"""Part B send and ack: B.21–B.29."""

from __future__ import annotations

import asyncio

from claudemesh_gateway.devbroker.presence import Conn
from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.crypto import KeyPair

RATE = "rate_limit: max 60 msg/min (burst 10) \u2014 slow down"
NO_PEER = "no connected peer for target (not online, or targetSpec is your own key without another session)"
BLOCKED = "blocked by recipient grants (sender lacks dm capability)"


async def test_b21_rate_limit_per_member(make_broker, connect):
    b = await make_broker()
    seed = b.default_mesh
    a1 = await connect(b, seed.alice)
    a2 = await connect(b, seed.alice)                 # same member: same bucket
    bob = await connect(b, seed.bob)
    for i in range(10):
        sender = a1 if i % 2 else a2
        assert (await sender.send_msg("*"))["queued"] is True
    refused = await a1.send_msg("*", msg_id="over")
    assert refused == {"type": "ack", "id": "over", "messageId": "", "queued": False, "error": RATE}
    assert (await a2.send_msg("*"))["error"] == RATE
    assert (await bob.send_msg("*"))["queued"] is True                 # another member: its own bucket
    assert (await a1.request({"type": "list_peers"}, "peers_list"))["peers"]   # other verbs are not limited
    # malformed sends consume tokens too; refused takes cost nothing; refill is continuous
    b.set_rate_limit(2, 600)                                            # 10 tokens/s
    await a1.send({"type": "send", "id": "bad1", "priority": "next"})
    await a1.send({"type": "send", "id": "bad2", "priority": "next"})
    assert (await a1.send_msg("*", msg_id="x"))["error"].startswith("rate_limit")
    await asyncio.sleep(0.25)
    assert (await a1.send_msg("*"))["queued"] is True


def test_b21_token_bucket_refill_and_idle_drop():
    from claudemesh_gateway.devbroker.ratelimit import TokenBuckets

    buckets = TokenBuckets(10, 60, idle_s=600)
    assert all(buckets.take("m", now=100.0) for _ in range(10))      # a new bucket starts full
    assert not buckets.take("m", now=100.0)
    assert not buckets.take("m", now=100.5)                          # half a token after 0.5 s (60/min)
    assert buckets.take("m", now=101.0)                              # the refused take cost nothing
    assert buckets.prune(now=101.0 + 600.5) == 1 and len(buckets) == 0   # idle 10 min: dropped


async def test_b22_payload_too_large(make_broker, connect):
    b = await make_broker(max_frame_bytes=200_000)
    seed = b.default_mesh
    a = await connect(b, seed.alice)
    nonce = crypto.b64(bytes(24))
    ct = "A" * (65_536 - len(nonce) - 1)             # N = len(ct) + len(nonce) + len("*") = 65,536: accepted
    assert (await a.send_msg("*", nonce=nonce, ciphertext=ct))["queued"] is True
    ack = await a.send_msg("*", nonce=nonce, ciphertext=ct + "A", msg_id="big")
    assert ack == {"type": "ack", "id": "big", "messageId": "", "queued": False,
                   "error": "payload too large: 65537 bytes > MAX_MESSAGE_BYTES=65536"}


async def test_b23_classification_by_prefix_only(broker, connect):
    seed = broker.default_mesh
    a = await connect(broker, seed.alice, groups=[{"name": "ops"}])
    bob = await connect(broker, seed.bob, groups=[{"name": "ops"}])
    for target in ("*", "@all", "@ops"):
        ack = await a.send_msg(target)
        assert ack["queued"] is True
        push = await bob.recv_push()
        assert push["messageId"] == ack["messageId"] and push["senderName"] == "alice"
    topic_ack = await a.send_msg("#" + seed.general_topic_id, bodyVersion=1)
    assert topic_ack["queued"] is True
    for target in ("bob", bob.session.public_hex[:16], "tag:ops", "@bob-not-resolved"[1:]):
        assert (await a.send_msg(target))["error"] == NO_PEER          # no names, prefixes or tags
    assert await bob.pushes() == []   # the topic post is not pushed


async def test_b24_direct_preflight(broker, connect):
    seed = broker.default_mesh
    a1 = await connect(broker, seed.alice)
    assert (await a1.send_msg(seed.alice.pubkey))["error"] == NO_PEER        # own member, no other session
    assert (await a1.send_msg(a1.session.public_hex))["error"] == NO_PEER    # own sending socket
    a2 = await connect(broker, seed.alice)
    assert (await a1.send_msg(seed.alice.pubkey))["queued"] is True          # another session of the member
    assert (await a1.send_msg(a2.session.public_hex))["queued"] is True
    bob = await connect(broker, seed.bob)
    await bob.close()                                                         # offline lease still counts
    await asyncio.sleep(0.1)
    assert (await a1.send_msg(seed.bob.pubkey))["queued"] is True
    assert (await a1.send_msg(KeyPair.generate().public_hex))["error"] == NO_PEER
    # grants: bob's grants for alice's member pubkey lack dm -> blocked (member entry before session entry)
    bob2 = await connect(broker, seed.bob)
    broker.set_grants(seed.mesh_id, seed.bob.member_id, seed.alice.pubkey, ["read"])
    broker.set_grants(seed.mesh_id, seed.bob.member_id, a1.session.public_hex, ["dm"])
    assert (await a1.send_msg(bob2.session.public_hex))["error"] == BLOCKED
    broker.set_grants(seed.mesh_id, seed.bob.member_id, seed.alice.pubkey, ["read", "dm"])
    assert (await a1.send_msg(bob2.session.public_hex))["queued"] is True
    # member fallback: a member's stale session key passes pre-flight
    carol = broker.add_member(seed.mesh_id, "carol")
    c_old = await connect(broker, carol)
    await c_old.close()
    await connect(broker, carol)
    del broker.registry.entries[c_old.ack["presenceId"]]                     # the old lease is gone
    assert (await a1.send_msg(c_old.session.public_hex))["queued"] is True


async def test_b25_one_queue_row_per_send(broker, connect):
    seed = broker.default_mesh
    a = await connect(broker, seed.alice)
    bob = await connect(broker, seed.bob)
    before = len(broker.queue_rows())
    acks = [await a.send_msg(bob.session.public_hex, msg_id=f"same-{i}", client_message_id="cm-1",
                             request_fingerprint="ab" * 32) for i in range(2)]
    rows = [r for r in broker.queue_rows() if r.id in {x["messageId"] for x in acks}]
    assert len(broker.queue_rows()) == before + 2 and len(rows) == 2        # no dedupe
    row = rows[0]
    assert (row.target_spec, row.priority, row.sender_member_id, row.sender_session_pubkey,
            row.client_message_id, row.request_fingerprint) == (
        bob.session.public_hex, "next", seed.alice.member_id, a.session.public_hex, "cm-1", "ab" * 32)
    assert len(row.id) == 32
    for bad in ({"nonce": None}, {"ciphertext": None}, {"priority": "urgent"}):
        frame = {"type": "send", "id": "bad", "targetSpec": bob.session.public_hex, "priority": "next",
                 "nonce": crypto.b64(bytes(24)), "ciphertext": "eA==", **bad}
        frame = {k: v for k, v in frame.items() if v is not None}
        await a.send(frame)
    assert [f for f in await a.quiet() if f.get("type") == "ack"] == []      # the insert throws: no ack
    assert len(broker.queue_rows()) == before + 2


async def test_b26_topic_targets_and_black_hole(broker, connect):
    seed = broker.default_mesh
    a = await connect(broker, seed.alice)
    general = "#" + seed.general_topic_id
    other = broker.create_topic(seed.mesh_id, "other", seed.alice.member_id)
    ack1 = await a.send_msg(general, bodyVersion=3, mentions=["bob"])
    tm1 = broker.topic_messages(topic_id=seed.general_topic_id)[-1]
    assert (tm1.body_version, tm1.reply_to_id, tm1.sender_member_id) == (3, None, seed.alice.member_id)
    assert [n.member_id for n in broker.store.notifications if n.message_id == tm1.id] == [seed.bob.member_id]
    await a.send_msg(general, replyToId=tm1.id)                              # same topic: kept
    tm2 = broker.topic_messages(topic_id=seed.general_topic_id)[-1]
    assert tm2.body_version == 1 and tm2.reply_to_id == tm1.id
    await a.send_msg("#" + other.topic_id, replyToId=tm1.id)                 # other topic: dropped
    assert broker.topic_messages(topic_id=other.topic_id)[-1].reply_to_id is None
    n = len(broker.topic_messages())
    ack = await a.send_msg(general, bodyVersion="3")                        # non-integer: insert fails
    assert ack["queued"] is True and len(broker.topic_messages()) == n
    hole = await a.send_msg("#general")                                      # a topic NAME: the black hole
    assert hole["queued"] is True and len(broker.topic_messages()) == n
    bob = await connect(broker, seed.bob)                                    # a general member drains...
    drained = [f["messageId"] for f in await bob.pushes()]
    assert hole["messageId"] not in drained and ack1["messageId"] in drained


async def test_b27_ack_before_fan_out(broker, connect, monkeypatch):
    seed = broker.default_mesh
    a = await connect(broker, seed.alice)
    bob = await connect(broker, seed.bob)
    order: list[tuple[str, str]] = []
    real_send = Conn.send

    async def spy(self, frame):
        order.append((frame.get("type"), frame.get("messageId")))
        return await real_send(self, frame)

    monkeypatch.setattr(Conn, "send", spy)
    for target in ("*", bob.session.public_hex):
        ack = await a.send_msg(target)
        push = await bob.recv_push()
        assert push["messageId"] == ack["messageId"]
        assert order.index(("ack", ack["messageId"])) < order.index(("push", ack["messageId"]))


async def test_b28_fan_out_rules(broker, connect):
    seed = broker.default_mesh
    a1 = await connect(broker, seed.alice, groups=[{"name": "ops"}])
    a2 = await connect(broker, seed.alice, groups=[{"name": "ops"}])
    bob = await connect(broker, seed.bob, groups=[{"name": "ops/sub"}])
    gw = await connect(broker, seed.gateway, mode="hello", groups=[{"name": "ops"}])
    ack = await a1.send_msg("*")
    assert (await bob.recv_push())["messageId"] == ack["messageId"]
    assert (await gw.recv_push())["messageId"] == ack["messageId"]
    assert await a2.pushes() == []   # never the sender's own member
    row = next(r for r in broker.queue_rows() if r.id == ack["messageId"])
    assert row.delivered_at is not None
    late = await connect(broker, seed.bob)                                   # later peers never get it
    assert await late.pushes() == []
    # group: exact name only; hidden peers and peers whose grants lack broadcast are skipped silently
    ack = await a1.send_msg("@ops")
    assert (await gw.recv_push())["messageId"] == ack["messageId"]
    assert await bob.pushes() == []
    await gw.request({"type": "set_visible", "visible": False, "_reqId": "v"}, "ack")
    hidden = await a1.send_msg("*")
    assert await gw.pushes() == []
    assert await bob.expect_pushes(1) == [hidden["messageId"]]
    assert await late.expect_pushes(1) == [hidden["messageId"]]
    broker.set_grants(seed.mesh_id, seed.bob.member_id, seed.alice.pubkey, ["read", "dm"])
    await a1.send_msg("*")
    assert await bob.pushes() == []
    # direct: a drain trigger on the matching connection only (dm allowed)
    dm = await a1.dm(bob.session.public_hex, "hi bob")
    push = await bob.recv_push()
    assert push["messageId"] == dm["messageId"] and "senderName" not in push
    assert crypto.box_open(push["nonce"], push["ciphertext"], push["senderPubkey"], bob.session) == "hi bob"
    assert await late.pushes() == []
    # topic: no push and no drain
    topic_post = await a1.send_msg("#" + seed.general_topic_id)
    assert await bob.pushes() == []
    # stale session key: acked through the member fallback, never delivered
    stale = await connect(broker, seed.bob)
    await stale.close()
    await asyncio.sleep(0.05)
    del broker.registry.entries[stale.ack["presenceId"]]
    ack = await a1.send_msg(stale.session.public_hex)
    assert ack["queued"] is True
    # the DM's drain trigger on bob's connections may pick up other pending rows (the #general post,
    # the unacked DM), but never the stale-key DM: no drain matches it
    got = [f["messageId"] for f in await bob.pushes() + await late.pushes()]
    assert ack["messageId"] not in got and topic_post["messageId"] != ack["messageId"]
    row = next(r for r in broker.queue_rows() if r.id == ack["messageId"])
    assert (row.claim_id, row.delivered_at) == (None, None)


async def test_b29_live_envelope(broker, connect):
    seed = broker.default_mesh
    a = await connect(broker, seed.alice, displayName="Alice (laptop)")
    bob = await connect(broker, seed.bob)
    ack = await a.send_msg("*", ciphertext=crypto.v1_encode("hello all"), replyToId="anything-goes")
    push = await bob.recv_push()
    assert set(push) == {"type", "messageId", "meshId", "senderPubkey", "senderMemberPubkey", "senderMemberId",
                         "senderName", "priority", "nonce", "ciphertext", "createdAt", "replyToId"}
    assert (push["messageId"], push["senderPubkey"], push["senderMemberPubkey"], push["senderMemberId"],
            push["senderName"], push["replyToId"]) == (ack["messageId"], a.session.public_hex, seed.alice.pubkey,
                                                       seed.alice.member_id, "Alice (laptop)", "anything-goes")
    assert crypto.v1_decode(push["ciphertext"]) == "hello all"
    assert push["createdAt"].endswith("Z") and push["meshId"] == seed.mesh_id
    await a.send_msg("*")
    assert "replyToId" not in await bob.recv_push()
