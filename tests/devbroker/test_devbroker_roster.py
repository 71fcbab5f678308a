"""Part B roster and events: B.43–B.46."""

from __future__ import annotations

import asyncio
import uuid


async def test_b43_list_peers(make_broker, connect):
    b = await make_broker(grace_s=30)
    seed = b.default_mesh
    alice = await connect(b, seed.alice, hostname="laptop", model="opus", channel="cli")
    alice2 = await connect(b, seed.alice)
    bob = await connect(b, seed.bob)
    gw = await connect(b, seed.gateway, mode="hello")
    await gw.close()                                                        # a grace lease stays listed
    await asyncio.sleep(0.1)
    await alice2.request({"type": "set_visible", "visible": False}, "ack")
    reply = await alice.request({"type": "list_peers", "_reqId": "lp"}, "peers_list")
    assert reply["_reqId"] == "lp"
    peers = {p["pubkey"]: p for p in reply["peers"]}
    assert alice.session.public_hex in peers                              # includes the caller
    assert seed.gateway.pubkey in peers                                     # and grace leases
    assert alice2.session.public_hex in peers                              # hidden, but the caller's own member
    me = peers[alice.session.public_hex]
    assert {"pubkey", "memberPubkey", "displayName", "status", "summary", "groups", "sessionId", "connectedAt",
            "cwd", "peerRole", "visible", "profile"} <= set(me)
    assert (me["memberPubkey"], me["peerRole"], me["hostname"], me["model"], me["channel"]) == (
        seed.alice.pubkey, "session", "laptop", "opus", "cli")
    assert peers[seed.gateway.pubkey]["peerRole"] == "control-plane"
    others = {p["pubkey"] for p in (await bob.request({"type": "list_peers"}, "peers_list"))["peers"]}
    assert alice2.session.public_hex not in others and alice.session.public_hex in others


async def test_b44_system_pushes(broker, connect):
    seed = broker.default_mesh
    bob = await connect(broker, seed.bob)
    alice = await connect(broker, seed.alice)
    ev = await bob.recv_event("peer_joined")
    assert set(ev) == {"type", "subtype", "event", "eventData", "messageId", "meshId", "senderPubkey", "priority",
                       "nonce", "ciphertext", "createdAt"}
    assert (ev["type"], ev["subtype"], ev["senderPubkey"], ev["priority"], ev["nonce"], ev["ciphertext"],
            ev["meshId"]) == ("push", "system", "system", "low", "", "", seed.mesh_id)
    uuid.UUID(ev["messageId"])
    await alice.request({"type": "set_visible", "visible": False, "_reqId": "v"}, "ack")
    hidden = await bob.recv_event("peer_hidden")
    assert hidden["eventData"] == {"name": "alice", "pubkey": alice.session.public_hex}
    await alice.request({"type": "set_visible", "visible": True}, "ack")
    assert (await bob.recv_event("peer_visible"))["eventData"]["pubkey"] == alice.session.public_hex
    # reattach emits nothing
    again = await connect(broker, seed.alice, session=alice.session)
    assert again.ack["presenceId"] == alice.ack["presenceId"]
    assert [f for f in await bob.quiet() if f.get("subtype") == "system"] == []


async def test_b45_no_reply_verbs_and_ack_shapes(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    for frame in ({"type": "join_group", "name": "ops", "role": "lead", "_reqId": "1"},
                  {"type": "join_group", "name": "tmp"}, {"type": "leave_group", "name": "tmp", "_reqId": "2"},
                  {"type": "set_summary", "summary": "busy", "_reqId": "3"},
                  {"type": "set_status", "status": "idle", "_reqId": "4"},
                  {"type": "set_stats", "stats": {"messagesIn": 1}, "_reqId": "5"}):
        await alice.send(frame)
    assert await alice.quiet() == []
    entry = broker.registry.entries[alice.ack["presenceId"]]
    assert entry.groups == [{"name": "ops", "role": "lead"}] and entry.summary == "busy"
    assert entry.stats == {"messagesIn": 1}
    ack = await alice.request({"type": "set_visible", "visible": True, "_reqId": "v1"}, "ack")
    assert ack == {"type": "ack", "id": "v1", "messageId": "", "queued": False, "_reqId": "v1"}
    ack = await alice.request({"type": "set_profile", "title": "SRE", "bio": "hi"}, "ack")
    assert ack == {"type": "ack", "id": "", "messageId": "", "queued": False}
    assert entry.profile == {"title": "SRE", "bio": "hi"}


async def test_b46_message_status(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    bob = await connect(broker, seed.bob)
    dm = await alice.dm(bob.session.public_hex, "hi")
    await bob.recv_push()
    res = await bob.request({"type": "message_status", "messageId": dm["messageId"], "_reqId": "s"},
                            "message_status_result")
    assert res == {"type": "message_status_result", "messageId": dm["messageId"],
                   "targetSpec": bob.session.public_hex, "delivered": False, "deliveredAt": None,
                   "recipients": [{"name": "bob", "pubkey": bob.session.public_hex, "status": "held"}],
                   "_reqId": "s"}
    await bob.send({"type": "client_ack", "brokerMessageId": dm["messageId"]})
    res = await alice.request({"type": "message_status", "messageId": dm["messageId"][:8]},
                              "message_status_result")                 # an 8-char prefix; any member may ask
    assert res["delivered"] is True and res["deliveredAt"].endswith("Z")
    assert res["recipients"][0]["status"] == "delivered" and "_reqId" not in res
    for bad, n in (("short", 5), ("x" * 33, 33), ("bad-chars!", 10)):
        err = await alice.request({"type": "message_status", "messageId": bad, "_reqId": "e"}, "error")
        assert err == {"type": "error", "code": "invalid_argument",
                       "message": f"messageId must be 8-32 base62 chars (got {n})", "_reqId": "e"}
    err = await alice.request({"type": "message_status", "messageId": "Z" * 32}, "error")
    assert (err["code"], err["message"]) == ("not_found", "message not found")
    for i in range(3):
        row = broker.queue_rows()[-1]
        clone = type(row)(**{**{f: getattr(row, f) for f in row.__slots__}, "id": f"AmbigPfx{i}" + "0" * 23})
        broker.store.queue.append(clone)
    err = await alice.request({"type": "message_status", "messageId": "AmbigPfx", "_reqId": "a"}, "error")
    assert err == {"type": "error", "code": "ambiguous_prefix",
                   "message": "prefix matched 3 messages \u2014 use a longer id", "_reqId": "a"}
    await bob.close()
    await asyncio.sleep(0.1)
    held = await alice.dm(seed.bob.pubkey, "while away")
    res = await alice.request({"type": "message_status", "messageId": held["messageId"]}, "message_status_result")
    assert res["recipients"] == [{"name": "bob", "pubkey": bob.session.public_hex, "status": "disconnected"}]
