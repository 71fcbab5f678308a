"""Part B handshake: B.6–B.11."""

from __future__ import annotations

from claudemesh_gateway.devbroker import MemberInfo
from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.crypto import KeyPair


async def _rejected(c, frame) -> tuple[dict, int | None, str | None]:
    await c.send(frame)
    err = await c.recv()
    code, reason = await c.wait_closed()
    return err, code, reason


async def test_b06_hello_checks_order(make_broker, raw_ws, connect, mk):
    b = await make_broker(max_connections_per_mesh=2)
    seed = b.default_mesh
    mesh_id, gw = seed.mesh_id, seed.gateway
    stale = mk.now_ms() - 120_000

    # 1. sessionPubkey shape wins over everything else
    c = await raw_ws(b)
    err, code, reason = await _rejected(c, mk.hello(mesh_id, gw, sessionPubkey="AB" * 32, timestamp="x",
                                                    signature="zz"))
    assert err == {"type": "error", "code": "bad_session_pubkey",
                   "message": "sessionPubkey must be 64 lowercase hex chars"}
    assert (code, reason) == (1008, "bad_session_pubkey")

    # 3. timestamp: stale or a string -> timestamp_skew (before the malformed signature)
    for ts in (stale, str(mk.now_ms())):
        c = await raw_ws(b)
        err, code, reason = await _rejected(c, mk.hello(mesh_id, gw, timestamp=ts, signature="nothex"))
        assert (err["code"], err["message"], code, reason) == (
            "timestamp_skew", "hello rejected: timestamp_skew", 1008, "timestamp_skew")

    # 4. hex shapes -> malformed (before signature)
    c = await raw_ws(b)
    err, code, _ = await _rejected(c, mk.hello(mesh_id, gw, signature="ab" * 10))
    assert (err["code"], err["message"], code) == ("malformed", "hello rejected: malformed", 1008)

    # 5. ed25519 -> bad_signature
    c = await raw_ws(b)
    err, code, reason = await _rejected(c, mk.hello(mesh_id, gw, signature="00" * 64))
    assert (err["message"], code, reason) == ("hello rejected: bad_signature", 1008, "bad_signature")

    # 6. member lookup: unknown key, uppercase key (signature fine), revoked member
    stranger = MemberInfo("x", mesh_id, "stranger", "member", KeyPair.generate())   # not a member
    c = await raw_ws(b)
    err, code, reason = await _rejected(c, mk.hello(mesh_id, stranger))
    assert (err["code"], err["message"], code, reason) == ("unauthorized", "pubkey not found in mesh", 1008,
                                                          "unauthorized")
    upper = mk.hello(mesh_id, gw)
    upper["pubkey"] = gw.pubkey.upper()
    upper["signature"] = gw.keypair.sign_hex(crypto.canonical_hello(mesh_id, gw.member_id, upper["pubkey"],
                                                                    upper["timestamp"]))
    c = await raw_ws(b)
    assert (await _rejected(c, upper))[0]["code"] == "unauthorized"
    gone = b.add_member(mesh_id, "gone")
    b.revoke_member(mesh_id, gone.member_id)
    c = await raw_ws(b)
    err, code, reason = await _rejected(c, mk.hello(mesh_id, gone))
    assert err["code"] == "revoked"
    assert err["message"] == 'You\'ve been removed from "dev". Contact the mesh owner to rejoin.'
    assert (code, reason) == (4002, "banned")

    # uppercase signature passes; memberId is never checked
    frame = mk.hello(mesh_id, gw, memberId="not-the-member-id")
    frame["signature"] = gw.keypair.sign_hex(crypto.canonical_hello(mesh_id, "not-the-member-id", gw.pubkey,
                                                                    frame["timestamp"])).upper()
    c = await raw_ws(b)
    await c.send(frame)
    assert (await c.recv_type("hello_ack"))["memberDisplayName"] == "gateway"

    # 2. capacity (counted before timestamp/signature checks)
    await connect(b, seed.alice)
    assert b.mesh_count(mesh_id) == 2
    c = await raw_ws(b)
    err, code, reason = await _rejected(c, mk.hello(mesh_id, gw, timestamp=stale))
    assert (err["code"], err["message"], code, reason) == ("capacity", "mesh at connection capacity", 1008,
                                                          "capacity")


async def test_b07_hello_without_cwd_pid_or_session_id(broker, raw_ws, connect, mk):
    seed = broker.default_mesh
    for missing in ("cwd", "pid", "sessionId"):
        c = await raw_ws(broker)
        await c.send(mk.hello(seed.mesh_id, seed.gateway, drop=(missing,)))
        assert await c.quiet() == [], missing            # no reply, socket open
        assert broker.presences(seed.mesh_id) == []      # no presence
    # sessionId dedup has already run: an entry holding that sessionId is replaced
    old = await connect(broker, seed.alice, mode="hello", session_id="shared-sid")  # same role: dedup scope
    c = await raw_ws(broker)
    await c.send(mk.hello(seed.mesh_id, seed.gateway, session_id="shared-sid", drop=("cwd",)))
    assert await old.wait_closed() == (1000, "session_replaced")
    assert await c.quiet() == []
    assert broker.presences(seed.mesh_id) == []


async def test_b08_session_hello_checks_order(make_broker, raw_ws, connect, mk):
    b = await make_broker(max_connections_per_mesh=1)
    seed = b.default_mesh
    mesh_id, gw = seed.mesh_id, seed.gateway
    s = KeyPair.generate()
    now = mk.now_ms()

    async def check(frame, code, message, close=1008, reason=None):
        c = await raw_ws(b)
        err, got_code, got_reason = await _rejected(c, frame)
        assert (err["code"], err["message"]) == (code, message), err
        assert (got_code, got_reason) == (close, reason or code)

    bad = mk.session_hello(mesh_id, gw, s, sessionPubkey=s.public_hex.upper(), parentMemberPubkey="x")
    await check(bad, "bad_session_pubkey", "sessionPubkey must be 64 lowercase hex chars")
    await check(mk.session_hello(mesh_id, gw, s, parentMemberPubkey=gw.pubkey.upper(), parentAttestation=None),
                "bad_parent_pubkey", "parentMemberPubkey must be 64 lowercase hex chars")
    mismatch = "attestation_mismatch", "parentAttestation does not bind the claimed session+parent pubkeys"
    await check(mk.session_hello(mesh_id, gw, s, drop=("parentAttestation",)), *mismatch)
    other = mk.session_hello(mesh_id, gw, KeyPair.generate())["parentAttestation"]
    await check(mk.session_hello(mesh_id, gw, s, parentAttestation=other), *mismatch)

    # capacity comes before the attestation checks
    holder = await connect(b, seed.alice)
    await check(mk.session_hello(mesh_id, gw, s, expires_at=now - 1), "capacity", "mesh at connection capacity")
    await holder.close()
    await holder.wait_closed()
    b.registry.mesh_count[mesh_id] = 0   # free the slot now instead of waiting for eviction

    await check(mk.session_hello(mesh_id, gw, s, expires_at="soon"), "malformed", "attestation rejected: malformed")
    await check(mk.session_hello(mesh_id, gw, s, expires_at=now - 1000), "expired", "attestation rejected: expired")
    await check(mk.session_hello(mesh_id, gw, s, expires_at=now + 25 * 3600 * 1000), "ttl_too_long",
                "attestation rejected: ttl_too_long")
    f = mk.session_hello(mesh_id, gw, s)
    f["parentAttestation"]["signature"] = "zz"
    await check(f, "malformed", "attestation rejected: malformed")
    f = mk.session_hello(mesh_id, gw, s)
    f["parentAttestation"]["signature"] = "00" * 64
    await check(f, "bad_signature", "attestation rejected: bad_signature")
    await check(mk.session_hello(mesh_id, gw, s, ts=now - 61_000), "timestamp_skew",
                "session_hello rejected: timestamp_skew")
    await check(mk.session_hello(mesh_id, gw, s, signature="12"), "malformed", "session_hello rejected: malformed")
    await check(mk.session_hello(mesh_id, gw, s, signature="00" * 64), "bad_signature",
                "session_hello rejected: bad_signature")
    stranger = MemberInfo("x", mesh_id, "stranger", "member", KeyPair.generate())
    await check(mk.session_hello(mesh_id, stranger, s), "unauthorized", "parent pubkey not found in mesh")
    gone = b.add_member(mesh_id, "gone")
    b.revoke_member(mesh_id, gone.member_id)
    await check(mk.session_hello(mesh_id, gone, s), "revoked",
                'You\'ve been removed from "dev". Contact the mesh owner to rejoin.', 4002, "banned")
    await check(mk.session_hello(mesh_id, gw, s, parentMemberId=seed.alice.member_id), "parent_member_id_mismatch",
                "parentMemberId does not match parentMemberPubkey")
    ok = await connect(b, gw, session=s)          # and the happy path still works
    assert ok.ack["type"] == "hello_ack"


async def test_b09_hello_flow_drain_before_ack_and_join_events(broker, connect, raw_ws, mk):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    alice2 = await connect(broker, seed.alice)           # same member, second session
    bob = await connect(broker, seed.bob)
    alice.backlog.clear()
    ack = await bob.dm(seed.gateway.pubkey, "queued before the gateway connects")
    assert ack["queued"] is False           # no connected peer yet: nothing queued
    other = await connect(broker, seed.gateway, mode="hello")
    ack = await bob.dm(seed.gateway.pubkey, "queued while gateway is online")
    assert ack["queued"] is True
    assert (await other.recv_push())["messageId"] == ack["messageId"]
    await other.send({"type": "client_ack", "brokerMessageId": "nothing"})   # leave the row claimed
    # a fresh control-plane hello (another sessionId) drains before its ack once the claim expires
    broker.sweep_claims()
    for row in broker.queue_rows():
        row.claim_expires_at = None
    c = await raw_ws(broker)
    await c.send(mk.hello(seed.mesh_id, seed.gateway))
    first = await c.recv()
    assert first["type"] == "push" and first["messageId"] == ack["messageId"]
    assert (await c.recv())["type"] == "hello_ack"
    # peer_joined goes to other members' connections only (hello)
    joined = await bob.recv_event("peer_joined")
    assert joined["eventData"]["name"] == "gateway"
    assert joined["senderPubkey"] == "system" and joined["priority"] == "low"
    assert [f for f in await other.quiet() if f.get("event") == "peer_joined"] == []
    assert await alice2.recv_match(lambda f: f.get("event") == "peer_joined"
                                   and f["eventData"]["pubkey"] == seed.gateway.pubkey)
    # peer_returned once peer_state exists for (mesh, member)
    await other.close()
    await other.wait_closed()
    again = await connect(broker, seed.gateway, mode="hello")
    ret = await bob.recv_event("peer_returned")
    assert set(ret["eventData"]) == {"name", "pubkey", "groups", "lastSeenAt", "summary"}
    assert again.ack["restored"] is True


async def test_b10_hello_ack_contents(broker, connect):
    seed = broker.default_mesh
    m = broker.add_member(seed.mesh_id, "carol", groups=[{"name": "ops", "role": "lead"}], role_tag="sre",
                          message_mode="inbox")
    c = await connect(broker, m, mode="hello", displayName="Carol (bot)")
    ack = c.ack
    assert len(ack["presenceId"]) == 32
    assert ack["memberDisplayName"] == "Carol (bot)"
    assert ack["memberProfile"] == {"roleTag": "sre", "groups": [{"name": "ops", "role": "lead"}],
                                    "messageMode": "inbox"}
    assert "meshPolicy" not in ack and "restored" not in ack
    assert ack["services"] == []
    assert broker.presences(seed.mesh_id)[0]["groups"] == [{"name": "ops", "role": "lead"}]  # default groups
    await c.send({"type": "set_summary", "summary": "on call"})
    await c.send({"type": "join_group", "name": "night"})
    await c.send({"type": "set_stats", "stats": {"messagesIn": 3, "toolCalls": 1}})
    await c.request({"type": "list_peers"}, "peers_list")
    await c.close()
    await c.wait_closed()
    broker.set_mesh_policy(seed.mesh_id, {"selfEditable": {"displayName": True}})
    c2 = await connect(broker, m, mode="hello")
    ack = c2.ack
    assert ack["memberDisplayName"] == "carol"
    assert ack["meshPolicy"] == {"selfEditable": {"displayName": True}}
    assert ack["restored"] is True and ack["lastSummary"] == "on call" and ack["lastSeenAt"].endswith("Z")
    assert ack["restoredGroups"] == [{"name": "ops", "role": "lead"}, {"name": "night"}]
    assert ack["restoredStats"] == {"messagesIn": 3, "messagesOut": 0, "toolCalls": 1, "errors": 0}
    assert ack["services"] == []
    # hello groups win and suppress restoredGroups
    c3 = await connect(broker, m, mode="hello", groups=[{"name": "x"}])
    assert "restoredGroups" not in c3.ack and c3.ack["restored"] is True
    views = {p["sessionId"]: p for p in broker.presences(seed.mesh_id)}
    assert views[c3.session_id]["groups"] == [{"name": "x"}]
    assert views[c2.session_id]["groups"] == [{"name": "ops", "role": "lead"}, {"name": "night"}]


async def test_b11_session_hello_differences(broker, connect):
    seed = broker.default_mesh
    m = broker.add_member(seed.mesh_id, "dave", groups=["core"])
    first = await connect(broker, m, mode="session")
    assert set(first.ack) == {"type", "presenceId", "memberDisplayName", "memberProfile"}
    second = await connect(broker, m, mode="session", groups=[])
    # peer_joined reaches the same member's other connection
    ev = await first.recv_event("peer_joined")
    assert ev["eventData"] == {"name": "dave", "pubkey": second.session.public_hex, "groups": []}
    await first.close()
    await first.wait_closed()
    third = await connect(broker, m, mode="session")       # peer_state exists, still no restored*
    assert "restored" not in third.ack and "services" not in third.ack
    roles = {p["sessionId"]: (p["peerRole"], p["groups"], p["visible"]) for p in broker.presences(seed.mesh_id)}
    assert roles[third.session_id] == ("session", [{"name": "core"}], True)
