"""Part B topics: B.39–B.42."""

from __future__ import annotations

import asyncio

from claudemesh_gateway.devbroker import TopicMessage
from claudemesh_gateway.mesh import crypto


async def test_b39_topic_create_idempotent_with_sealed_key(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    bob = await connect(broker, seed.bob)
    created = await alice.request({"type": "topic_create", "name": "deploys", "_reqId": "c1"}, "topic_created")
    tid = created["topic"]["id"]
    assert created == {"type": "topic_created", "topic": {"id": tid, "name": "deploys", "visibility": "public"},
                       "created": True, "_reqId": "c1"}
    topic = broker.store.topics[tid]
    assert topic.encrypted_key_pubkey and len(tid) == 32
    sealed = broker.sealed_topic_key(tid, seed.alice.member_id)
    assert sealed is not None
    key = crypto.open_sealed_topic_key(sealed[0], sealed[1], seed.alice.keypair)
    assert key is not None and len(key) == 32                      # a random 32-byte key sealed to the creator
    assert crypto.open_sealed_topic_key(sealed[0], sealed[1], seed.bob.keypair) is None
    assert key.hex() not in str(broker.store.snapshot())             # the plaintext key is never stored
    again = await bob.request({"type": "topic_create", "name": "deploys", "visibility": "private"}, "topic_created")
    assert again == {"type": "topic_created", "topic": {"id": tid, "name": "deploys", "visibility": "private"},
                     "created": False}
    assert topic.visibility == "public"
    assert broker.store.topic_member(tid, seed.bob.member_id).role == "lead"    # lead every time
    assert broker.sealed_topic_key(tid, seed.bob.member_id) is None


async def test_b40_topic_list_and_id_resolution(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    hidden = broker.create_topic(seed.mesh_id, "secret", seed.bob.member_id, visibility="private")
    gone = broker.create_topic(seed.mesh_id, "old", seed.bob.member_id)
    broker.store.topics[gone.topic_id].archived_at = 1
    reply = await alice.request({"type": "topic_list", "_reqId": "l"}, "topic_list_response")
    by_name = {t["name"]: t for t in reply["topics"]}
    # membership/visibility ignored; "team" is the seeded sealed-key topic
    assert set(by_name) == {"general", "team", "secret"} and reply["_reqId"] == "l"
    assert set(by_name["general"]) == {"id", "name", "description", "visibility", "memberCount", "createdAt"}
    assert by_name["general"]["memberCount"] == 3 and by_name["secret"]["visibility"] == "private"
    assert by_name["secret"]["id"] == hidden.topic_id
    # a 20+ char [a-z0-9_-] argument is tried as an id first, then as a name
    decoy = broker.create_topic(seed.mesh_id, seed.general_topic_id, seed.bob.member_id)
    members = await alice.request({"type": "topic_members", "topic": seed.general_topic_id}, "topic_members_response")
    assert len(members["members"]) == 3                                     # resolved as general's id
    long_name = broker.create_topic(seed.mesh_id, "a-very-long-topic-name-here", seed.bob.member_id)
    members = await alice.request({"type": "topic_members", "topic": "a-very-long-topic-name-here"},
                                  "topic_members_response")
    assert [m["memberId"] for m in members["members"]] == [seed.bob.member_id] and long_name.created
    assert decoy.topic_id != seed.general_topic_id


async def test_b41_join_leave_mark_read_and_not_found(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    t = broker.create_topic(seed.mesh_id, "ops", seed.alice.member_id)
    for verb in ("topic_join", "topic_leave", "topic_mark_read", "topic_members", "topic_history"):
        err = await alice.request({"type": verb, "topic": "nope", "_reqId": f"r-{verb}"}, "error")
        assert err == {"type": "error", "code": "topic_not_found", "message": 'topic "nope" not found',
                       "id": f"r-{verb}"}
    err = await alice.request({"type": "topic_join", "topic": "nope"}, "error")
    assert "id" not in err and "_reqId" not in err
    await alice.send({"type": "topic_join", "topic": "ops", "role": "observer", "_reqId": "j"})
    await alice.send({"type": "topic_mark_read", "topic": "ops", "_reqId": "m"})
    assert await alice.quiet() == []                                         # no reply on success
    tm = broker.store.topic_member(t.topic_id, seed.alice.member_id)
    assert tm.role == "lead" and tm.last_read_at is not None                 # join keeps an existing role
    bob = await connect(broker, seed.bob)
    await bob.send({"type": "topic_join", "topic": t.topic_id})
    await bob.send({"type": "topic_join", "topic": "ops"})
    members = await bob.request({"type": "topic_members", "topic": "ops", "_reqId": "x"}, "topic_members_response")
    assert members["topic"] == "ops" and members["_reqId"] == "x"
    roles = {m["displayName"]: m["role"] for m in members["members"]}
    assert roles == {"alice": "lead", "bob": "member"}
    assert set(members["members"][0]) == {"memberId", "pubkey", "displayName", "role", "joinedAt", "lastReadAt"}
    await bob.send({"type": "topic_leave", "topic": "ops"})
    assert await bob.quiet() == []
    assert broker.store.topic_member(t.topic_id, seed.bob.member_id) is None


async def test_b42_topic_history(broker, connect):
    seed = broker.default_mesh
    t = broker.create_topic(seed.mesh_id, "hist", seed.alice.member_id)
    for i in range(60):
        broker.store.topic_messages.append(TopicMessage(
            id=f"m{i:02d}" + "x" * 29, mesh_id=seed.mesh_id, topic_id=t.topic_id,
            sender_member_id=seed.alice.member_id, sender_session_pubkey=None, nonce="", ciphertext="",
            body_version=1, created_at=10_000 + i // 2))            # pairs of rows tie on created_at
    bob = await connect(broker, seed.bob)                          # not a member: no membership check

    async def hist(**kw):
        return (await bob.request({"type": "topic_history", "topic": "hist", **kw}, "topic_history_response"))

    page = await hist(_reqId="h")
    assert page["topic"] == "hist" and page["_reqId"] == "h" and len(page["messages"]) == 50
    ids = [m["id"] for m in page["messages"]]
    assert ids[:3] == ["m59" + "x" * 29, "m58" + "x" * 29, "m57" + "x" * 29]    # created_at DESC, id DESC
    assert len((await hist(limit=0))["messages"]) == 1
    assert len((await hist(limit=500))["messages"]) == 60
    before = await hist(beforeId="m41" + "x" * 29, limit=200)              # strict <: its tie m40 is skipped
    assert before["messages"][0]["id"] == "m39" + "x" * 29 and len(before["messages"]) == 40
    assert (await hist(beforeId="unknown"))["messages"] == []
    # fields: session pk else member pk; member display name; replyToId only when set; bodyVersion verbatim
    alice = await connect(broker, seed.alice, displayName="Alice override")
    await alice.send_msg("#" + t.topic_id, bodyVersion=3)
    first = broker.topic_messages(topic_id=t.topic_id)[-1]
    await asyncio.sleep(0.003)                                          # distinct created_at (ties sort by id)
    await alice.send_msg("#" + t.topic_id, replyToId=first.id)
    top = (await hist(limit=2))["messages"]
    assert top[0]["replyToId"] == first.id and "replyToId" not in top[1]
    assert top[1]["bodyVersion"] == 3 and top[1]["senderPubkey"] == alice.session.public_hex
    assert top[1]["senderName"] == "alice" and top[1]["senderMemberId"] == seed.alice.member_id
    assert set(top[1]) == {"id", "senderPubkey", "senderMemberId", "senderName", "nonce", "ciphertext",
                           "bodyVersion", "createdAt"}
    old = (await hist(beforeId=top[1]["id"], limit=1))["messages"][0]
    assert old["senderPubkey"] == seed.alice.pubkey                      # no session pk on that row
