"""Direct messages between two peers through the dev broker: crypto_box both ways, client_ack, dedup."""

from __future__ import annotations

import pytest
from claudemesh_gateway.mesh import MemoryKV, crypto


@pytest.mark.parametrize("handshake", ["session", "member"])
async def test_two_peers_exchange_dms_both_ways(broker, make_peer, handshake, new_inbox, eventually):
    seed = broker.default_mesh
    in_gw, in_alice = new_inbox(), new_inbox()
    gw = await make_peer(seed.gateway, on_message=in_gw, handshake=handshake)
    alice = await make_peer(seed.alice, on_message=in_alice, handshake=handshake)

    qid = await alice.send_dm(gw.session_pubkey, "hello gateway ✓")
    assert qid
    [got] = await in_gw.wait(1)
    assert (got.kind, got.text, got.sender_pubkey) == ("dm", "hello gateway ✓", alice.session_pubkey)
    assert got.id == got.client_message_id  # stable id for the durable inbox ledger

    await gw.send_dm(alice.session_pubkey, "hello alice")
    [back] = await in_alice.wait(1)
    assert (back.kind, back.text, back.sender_name) == ("dm", "hello alice", "gateway")

    # a DM to the member pubkey is sealed to the member key and still opens (A.9 step 3)
    await alice.send_dm(seed.gateway.pubkey, "to your member key")
    await in_gw.wait(2)
    assert in_gw.texts == ["hello gateway ✓", "to your member key"]

    # everything was client_acked: no undelivered direct rows remain
    await eventually(lambda: all(r.delivered_at for r in broker.queue_rows() if not r.target_spec.startswith("#")))
    # nothing on the wire is plaintext
    assert all("hello" not in (crypto.v1_decode(r.ciphertext) or "") for r in broker.queue_rows())


async def test_duplicate_push_is_acked_and_delivered_once(broker, make_peer, new_inbox, eventually):
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox)
    alice = await make_peer(seed.alice)
    await alice.send_dm(gw.session_pubkey, "once", client_message_id="fixed-cmid-1")
    await inbox.wait(1)
    # the same client_message_id again (a sender retry): delivered once, acked anyway
    await alice.send_dm(gw.session_pubkey, "once", client_message_id="fixed-cmid-1")
    await eventually(lambda: all(r.delivered_at for r in broker.queue_rows()))
    assert inbox.texts == ["once"]
    assert gw.pushes.dropped["duplicate"] == 1


async def test_on_message_failure_leaves_push_unacked(broker, make_peer, eventually):
    seed = broker.default_mesh
    calls = []

    async def failing(item):
        calls.append(item.text)
        raise RuntimeError("store down")

    gw = await make_peer(seed.gateway, on_message=failing)
    alice = await make_peer(seed.alice)
    await alice.send_dm(gw.session_pubkey, "keep me")
    await eventually(lambda: calls == ["keep me"])
    rows = [r for r in broker.queue_rows() if r.target_spec == gw.session_pubkey]
    assert rows and rows[0].delivered_at is None  # not acked: comes back on the next drain


async def test_restart_within_grace_redrains_dm_claimed_for_the_old_socket(broker, make_peer, new_inbox,
                                                                           eventually):
    """A restart is an outage too: the persisted presence id tells the new process it
    reattached, so the post-reattach redrain fetches the DM claimed for the old socket."""
    from claudemesh_gateway.mesh import MemoryKV

    seed = broker.default_mesh
    alice = await make_peer(seed.alice)
    kv = MemoryKV()
    bob = await make_peer(seed.bob, kv=kv)
    await bob.stop()  # bob's lease stays (grace): alice's DM is claimed for the closed socket
    await alice.send_dm(seed.bob.pubkey, "waiting for you")
    inbox = new_inbox()
    # same identity: reattach; the claim (1 s) outlives the first drain, the redrain gets it
    await make_peer(seed.bob, kv=kv, on_message=inbox, reattach_redrain_delay=1.2)
    await inbox.wait(1, timeout=5)
    assert inbox.texts == ["waiting for you"]
    await eventually(lambda: all(r.delivered_at for r in broker.queue_rows() if r.target_spec == seed.bob.pubkey))


async def test_drained_plaintext_topic_row_is_classified_and_dropped(broker, make_peer, new_inbox, eventually):
    """A.9 step 6: a drained base64 push without senderName is classified with message_status;
    a #topic row is acked and dropped (topics are read from history), never shown as a DM."""
    seed = broker.default_mesh
    topics = {"general": {"encryption": "plaintext"}}
    inbox = new_inbox()
    kv = MemoryKV()
    gw = await make_peer(seed.gateway, kv=kv, topics=topics)
    await gw.stop()
    alice = await make_peer(seed.alice, topics=topics)
    await alice.post_topic("general", "plain topic row")
    gw2 = await make_peer(seed.gateway, kv=kv, on_message=inbox, topics=topics)  # hello drains the row
    await eventually(lambda: gw2.pushes.dropped["topic_row"] >= 1)
    assert inbox.items == []
    row = next(r for r in broker.queue_rows() if r.target_spec.startswith("#"))
    await eventually(lambda: row.delivered_at is not None)


async def test_drained_v2_topic_row_without_its_key_is_classified_not_undecryptable(broker, make_peer, new_inbox,
                                                                                   eventually):
    """A drained bodyVersion 2 row whose sealed key we do not hold fails every key and base64: it is
    classified with message_status and dropped as a topic row (it is read from history), not logged
    as undecryptable."""
    from claudemesh_gateway.mesh import crypto

    seed = broker.default_mesh
    topic = broker.create_topic(seed.mesh_id, "crew", seed.alice.member_id)       # sealed for alice only
    broker.join_topic(seed.mesh_id, "crew", seed.gateway.member_id)
    key = crypto.open_sealed_topic_key(*broker.sealed_topic_key(topic.topic_id, seed.alice.member_id),
                                       seed.alice.keypair)
    kv = MemoryKV()
    gw = await make_peer(seed.gateway, kv=kv)
    await gw.stop()
    alice = await make_peer(seed.alice)
    nonce, ct = crypto.secretbox_seal("v2 row", key)
    await alice.sender.send({"type": "send", "id": "c1", "client_message_id": "c1", "targetSpec": "#" + topic.topic_id,
                             "priority": "next", "nonce": nonce, "ciphertext": ct, "bodyVersion": 2,
                             "mentions": []}, retry_window=0)
    inbox = new_inbox()
    gw2 = await make_peer(seed.gateway, kv=kv, on_message=inbox)                 # hello drains the row
    await eventually(lambda: gw2.pushes.dropped["topic_row"] >= 1)
    assert gw2.pushes.dropped["undecryptable"] == 0 and inbox.items == []
