"""A.13 on the dev broker: WS API keys, REST /api/v1 auth errors, sealed keys on topic_create, key,
pending-seals, seal and claim-key, with upstream's status codes and bodies."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from claudemesh_gateway.mesh import crypto
from nacl.public import PrivateKey


async def _mint(client, **over):
    frame = {"type": "apikey_create", "label": "t", "capabilities": ["read", "send"], "_reqId": "k", **over}
    return await client.request(frame, "apikey_created")


async def _get(http, broker, path, secret=None):
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with http.get(broker.rest_url + path, headers=headers) as resp:
        return resp.status, await resp.json()


async def _post(http, broker, path, body, secret):
    async with http.post(broker.rest_url + path, json=body, headers={"Authorization": f"Bearer {secret}"}) as resp:
        return resp.status, await resp.json()


async def test_apikey_create_list_revoke_over_ws(broker, connect):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    key = await _mint(alice, topicScopes=["general"], expiresAt=expires)
    assert key["_reqId"] == "k" and key["secret"].startswith("cm_") and len(key["secret"]) == 46
    assert key["prefix"] == key["secret"][:11] and key["capabilities"] == ["read", "send"]
    assert key["topicScopes"] == ["general"] and key["label"] == "t" and key["createdAt"].endswith("Z")
    [row] = broker.store.api_keys
    assert row.secret_hash == hashlib.sha256(key["secret"].encode()).hexdigest()       # only the hash is kept
    assert key["secret"] not in repr(broker.store.snapshot())
    assert row.issued_by_member_id == seed.alice.member_id
    # invalid_args, with the request id in ``id``
    alice.backlog.clear()
    await alice.send({"type": "apikey_create", "label": "", "capabilities": ["read"], "_reqId": "bad"})
    err = await alice.recv_type("error")
    assert (err["code"], err["message"], err["id"]) == ("invalid_args", "label and at least one capability required",
                                                          "bad")
    listed = await alice.request({"type": "apikey_list", "_reqId": "l"}, "apikey_list_response")
    assert [k["id"] for k in listed["keys"]] == [key["id"]] and "secret" not in listed["keys"][0]
    gone = await alice.request({"type": "apikey_revoke", "id": key["id"][:6], "_reqId": "r"}, "apikey_revoke_response")
    assert gone["status"] == "revoked" and gone["id"] == key["id"]
    again = await alice.request({"type": "apikey_revoke", "id": key["id"], "_reqId": "r2"}, "apikey_revoke_response")
    assert again["status"] == "not_found"


async def test_rest_auth_errors_have_upstreams_codes_and_body(broker, connect, http):
    seed = broker.default_mesh
    alice = await connect(broker, seed.alice)
    status, body = await _get(http, broker, "/api/v1/topics")
    assert status == 401 and body["code"] == "error.api_key_missing"
    assert set(body) == {"code", "message", "status", "timestamp", "path"} and body["status"] == 401
    assert body["path"] == "/api/v1/topics"
    status, body = await _get(http, broker, "/api/v1/topics", "cm_" + "x" * 43)
    assert (status, body["code"]) == (401, "error.api_key_invalid")
    send_only = await _mint(alice, capabilities=["send"])
    status, body = await _get(http, broker, "/api/v1/topics", send_only["secret"])
    assert (status, body["code"]) == (403, "error.api_key_missing_capability")
    scoped = await _mint(alice, topicScopes=["general"], _reqId="k2")
    status, body = await _get(http, broker, "/api/v1/topics/team/key", scoped["secret"])
    assert (status, body["code"]) == (403, "error.api_key_topic_out_of_scope")
    status, body = await _get(http, broker, "/api/v1/topics", scoped["secret"])   # scoped listing
    assert status == 200 and [t["name"] for t in body["topics"]] == ["general"]
    expired = broker.create_api_key(seed.mesh_id, ["read"], issued_by_member_id=seed.alice.member_id,
                                    expires_in=-1)
    status, body = await _get(http, broker, "/api/v1/topics", expired)
    assert (status, body["code"]) == (401, "error.api_key_invalid")
    admin = broker.create_api_key(seed.mesh_id, ["admin"], issued_by_member_id=seed.alice.member_id)
    status, body = await _get(http, broker, "/api/v1/topics", admin)                 # admin implies read
    assert status == 200 and {t["name"] for t in body["topics"]} == {"general", "team"}


async def test_topic_create_seals_for_the_creator_and_key_endpoint(broker, connect, http):
    seed = broker.default_mesh
    bob = await connect(broker, seed.bob)
    created = await bob.request({"type": "topic_create", "name": "ops", "_reqId": "c"}, "topic_created")
    tid = created["topic"]["id"]
    topic = broker.store.topics[tid]
    blob, nonce = broker.sealed_topic_key(tid, seed.bob.member_id)
    assert len(crypto.unb64(blob)) == 80 and len(crypto.unb64(nonce)) == 24
    assert crypto.unb64(blob)[:32].hex() == topic.encrypted_key_pubkey   # the fresh sender keypair's public half
    key = await _mint(bob)
    status, body = await _get(http, broker, "/api/v1/topics/ops/key", key["secret"])
    assert status == 200 and set(body) == {"topic", "topicId", "encryptedKey", "nonce", "senderPubkey", "createdAt"}
    assert (body["topic"], body["topicId"], body["encryptedKey"], body["nonce"]) == ("ops", tid, blob, nonce)
    topic_key = crypto.open_sealed_topic_key(body["encryptedKey"], body["nonce"], seed.bob.keypair)
    assert topic_key is not None and len(topic_key) == 32
    # the other outcomes of GET /key
    status, body = await _get(http, broker, "/api/v1/topics/general/key", key["secret"])
    assert (status, body["error"], body["topic"]) == (409, "topic_unencrypted", "general")
    status, body = await _get(http, broker, "/api/v1/topics/nope/key", key["secret"])
    assert (status, body) == (404, {"error": "topic_not_found", "topic": "nope"})
    alice = await connect(broker, seed.alice)
    alice_key = await _mint(alice)
    status, body = await _get(http, broker, "/api/v1/topics/ops/key", alice_key["secret"])
    assert (status, body["error"]) == (404, "key_not_sealed_for_member")
    legacy = broker.create_api_key(seed.mesh_id, ["read"])                             # no issuing member
    status, body = await _get(http, broker, "/api/v1/topics/ops/key", legacy)
    assert (status, body) == (400, {"error": "api_key_has_no_issuer"})


async def test_pending_seals_seal_and_claim_key(broker, connect, http):
    seed = broker.default_mesh
    bob = await connect(broker, seed.bob)
    await bob.request({"type": "topic_create", "name": "ops", "_reqId": "c"}, "topic_created")
    tid = broker.topic_id(seed.mesh_id, "ops")
    broker.join_topic(seed.mesh_id, "ops", seed.alice.member_id)
    secret = (await _mint(bob))["secret"]
    status, body = await _get(http, broker, "/api/v1/topics/ops/pending-seals", secret)
    assert status == 200 and body["topicId"] == tid and body["senderPubkey"] == broker.store.topics[tid].encrypted_key_pubkey
    assert body["pending"] == [{"memberId": seed.alice.member_id, "pubkey": seed.alice.pubkey, "displayName": "alice"}]
    topic_key = crypto.open_sealed_topic_key(*broker.sealed_topic_key(tid, seed.bob.member_id), seed.bob.keypair)
    blob, nonce = crypto.seal_topic_key(topic_key, seed.alice.pubkey, seed.bob.keypair.x25519_private)
    status, body = await _post(http, broker, "/api/v1/topics/ops/seal",
                               {"memberId": seed.alice.member_id, "encryptedKey": blob, "nonce": nonce}, secret)
    assert status == 200 and body["memberId"] == seed.alice.member_id and body["topicId"] == tid
    assert crypto.open_sealed_topic_key(*broker.sealed_topic_key(tid, seed.alice.member_id),
                                        seed.alice.keypair) == topic_key
    status, body = await _get(http, broker, "/api/v1/topics/ops/pending-seals", secret)
    assert body["pending"] == []
    status, body = await _post(http, broker, "/api/v1/topics/ops/seal",       # gateway never joined "ops"
                               {"memberId": seed.gateway.member_id, "encryptedKey": blob, "nonce": nonce}, secret)
    assert (status, body) == (404, {"error": "recipient_not_in_topic"})
    status, body = await _post(http, broker, "/api/v1/topics/ops/seal", {"memberId": seed.alice.member_id}, secret)
    assert status == 400
    status, body = await _post(http, broker, "/api/v1/topics/general/seal",
                               {"memberId": seed.alice.member_id, "encryptedKey": blob, "nonce": nonce}, secret)
    assert (status, body["error"]) == (409, "topic_unencrypted")
    status, body = await _get(http, broker, "/api/v1/topics/general/pending-seals", secret)
    assert (status, body) == (200, {"pending": [], "senderPubkey": None})
    # claim-key: compare-and-set on a keyless topic
    new_key, sender = bytes(range(32)), PrivateKey.generate()
    blob, nonce = crypto.seal_topic_key(new_key, seed.bob.pubkey, sender)
    claim = {"encryptedKeyPubkey": bytes(sender.public_key).hex(), "encryptedKey": blob, "nonce": nonce}
    status, body = await _post(http, broker, "/api/v1/topics/general/claim-key", claim, secret)
    assert status == 200 and body["topicId"] == seed.general_topic_id
    status, body = await _get(http, broker, "/api/v1/topics/general/key", secret)
    assert status == 200 and crypto.open_sealed_topic_key(body["encryptedKey"], body["nonce"],
                                                          seed.bob.keypair) == new_key
    status, body = await _post(http, broker, "/api/v1/topics/general/claim-key", claim, secret)
    assert (status, body["error"]) == (409, "already_encrypted")
