"""MeshPeer with REST configured (A.13) on the dev broker: v2 both ways between two peers, a keyless
topic claimed later, and what a peer without REST does with v2 rows."""

from __future__ import annotations

import aiohttp
import pytest
from claudemesh_gateway.errors import DeliveryError
from claudemesh_gateway.mesh import crypto
from nacl.public import PrivateKey

FAST_REST = {"reseal_interval": 0.1, "key_retry_interval": 0.1}


def _rest(broker, **over):
    return {"rest": {"url": broker.rest_url, **FAST_REST, **over}}


async def test_v2_between_peers_and_pending_until_sealed(broker, make_peer, new_inbox, eventually):
    seed = broker.default_mesh
    topic = broker.create_topic(seed.mesh_id, "crew", seed.alice.member_id)       # sealed for alice only
    broker.join_topic(seed.mesh_id, "crew", seed.gateway.member_id)
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox, **_rest(broker))
    await gw.watch_topic("crew")
    assert gw.sealed_key_report()["crew"]["state"] == "pending"
    with pytest.raises(DeliveryError, match="no member holding the key has sealed it") as info:
        await gw.post_topic("crew", "not in the clear")
    assert not info.value.permanent                                                  # retried later
    assert broker.topic_messages(topic_id=topic.topic_id) == []
    alice = await make_peer(seed.alice, **_rest(broker))                            # a key holder comes online
    mid = await alice.post_topic("crew", "v2 from alice")
    [row] = broker.topic_messages(topic_id=topic.topic_id)
    assert row.id == mid and row.body_version == 2
    await alice.watch_topic("crew")                                                  # her re-seal loop seals for gw
    await inbox.wait(1)
    assert inbox.texts == ["v2 from alice"] and inbox.items[0].body_version == 2
    mid2 = await gw.post_topic("crew", "v2 from the gateway")
    rows = {r.id: r for r in broker.topic_messages(topic_id=topic.topic_id)}
    assert rows[mid2].body_version == 2
    key = crypto.open_sealed_topic_key(*broker.sealed_topic_key(topic.topic_id, seed.alice.member_id),
                                       seed.alice.keypair)
    assert crypto.secretbox_open(rows[mid2].nonce, rows[mid2].ciphertext, key) == "v2 from the gateway"
    assert await gw.effective_encryption("crew") == ("auto", 2, "bodyVersion 2: the sealed topic key is held")


async def test_keyless_topic_claimed_later_is_read_as_v2(broker, make_peer, new_inbox):
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox, **_rest(broker))
    await gw.watch_topic("general")
    assert gw.sealed_key_report()["general"]["state"] == "unencrypted"
    # bob claims a key for the legacy topic (compare-and-set) and seals it for the gateway too
    key, sender = bytes(range(32)), PrivateKey.generate()
    secret = broker.create_api_key(seed.mesh_id, ["read", "send"], issued_by_member_id=seed.bob.member_id)
    blob, nonce = crypto.seal_topic_key(key, seed.bob.pubkey, sender)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as http:
        async with http.post(broker.rest_url + "/api/v1/topics/general/claim-key", json={
                "encryptedKeyPubkey": bytes(sender.public_key).hex(), "encryptedKey": blob, "nonce": nonce}) as r:
            assert r.status == 200
        gblob, gnonce = crypto.seal_topic_key(key, seed.gateway.pubkey, sender)
        async with http.post(broker.rest_url + "/api/v1/topics/general/seal", json={
                "memberId": seed.gateway.member_id, "encryptedKey": gblob, "nonce": gnonce}) as r:
            assert r.status == 200
    bob = await make_peer(seed.bob, **_rest(broker))
    await bob.post_topic("general", "now encrypted")
    await inbox.wait(1)
    assert inbox.texts == ["now encrypted"] and inbox.items[0].body_version == 2


async def test_without_rest_auto_posts_v1_and_v2_rows_are_skipped(broker, make_peer, new_inbox, eventually):
    seed = broker.default_mesh
    broker.create_topic(seed.mesh_id, "crew", seed.alice.member_id)
    broker.join_topic(seed.mesh_id, "crew", seed.gateway.member_id)
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox)                            # no rest.url: not configured
    assert gw.sealed is None and gw.sealed_key_report() == {}
    alice = await make_peer(seed.alice, **_rest(broker))
    await gw.watch_topic("crew")
    await alice.post_topic("crew", "sealed for members")
    await eventually(lambda: gw.pollers["crew"].undecryptable == 1)
    assert inbox.items == []
    # the topic is seen to be encrypted: auto refuses to post into it in the clear
    mode, bv, detail = await gw.effective_encryption("crew")
    assert (mode, bv) == ("auto", None) and "REST is not configured" in detail
    with pytest.raises(DeliveryError, match="not posting in the clear") as info:
        await gw.post_topic("crew", "secret")
    assert info.value.permanent and all(crypto.v1_decode(r.ciphertext) != "secret" for r in broker.topic_messages())
    # a keyless topic still gets v1 (readable upstream), with the reason stated
    mode, bv, detail = await gw.effective_encryption("general")
    assert (mode, bv) == ("auto", 1) and "REST is not configured" in detail


async def test_effective_encryption_reports_each_mode(broker, make_peer):
    seed = broker.default_mesh
    gw = await make_peer(seed.gateway, root_key=None, topics={"general": {"encryption": "hkdf"}}, **_rest(broker))
    mode, bv, detail = await gw.effective_encryption("general")
    assert (mode, bv) == ("hkdf", None) and "neither root_key nor key_secret" in detail
    plain = await make_peer(seed.alice, topics={"team": {"encryption": "plaintext"}}, **_rest(broker))
    assert await plain.effective_encryption("team") == ("plaintext", 1, "encryption = 'plaintext'")
