"""Sending: local token bucket, rate_limit acks retried, and the permanent ack errors."""

from __future__ import annotations

import pytest
from claudemesh_gateway.errors import DeliveryError
from claudemesh_gateway.mesh.crypto import KeyPair


async def test_burst_of_30_with_matching_buckets_never_hits_the_broker_limit(broker, make_peer, new_inbox):
    seed = broker.default_mesh
    broker.set_rate_limit(10, 600)  # the real shape (burst 10), refilled 10x faster to keep the test short
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox)
    alice = await make_peer(seed.alice, rate_burst=10, rate_per_minute=600)
    for i in range(30):
        await alice.send_dm(gw.session_pubkey, f"m{i}")
    await inbox.wait(30, timeout=20)
    assert sorted(inbox.texts, key=lambda t: int(t[1:])) == [f"m{i}" for i in range(30)]
    assert alice.sender.rate_limited == 0 and alice.sender.sent == 30


async def test_rate_limit_acks_are_retried_and_nothing_is_lost(broker, make_peer, new_inbox):
    seed = broker.default_mesh
    broker.set_rate_limit(10, 1200)
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox)
    # a local bucket far larger than the broker's: the broker refuses, we resend after >= 1 s
    alice = await make_peer(seed.alice, rate_burst=1000, rate_per_minute=600_000)
    import asyncio

    await asyncio.gather(*(alice.send_dm(gw.session_pubkey, f"b{i}") for i in range(30)))
    await inbox.wait(30, timeout=30)
    assert sorted(inbox.texts) == sorted(f"b{i}" for i in range(30))
    assert alice.sender.rate_limited > 0
    assert len({i.client_message_id for i in inbox.items}) == 30


async def test_too_large_is_refused_before_sending(broker, make_peer):
    seed = broker.default_mesh
    alice = await make_peer(seed.alice, max_plaintext_bytes=60_000)
    before = len(broker.queue_rows())
    with pytest.raises(DeliveryError, match="65536-byte limit") as ei:
        await alice.send_dm(seed.gateway.pubkey, "x" * 55_000)
    assert ei.value.permanent
    with pytest.raises(DeliveryError, match="max_plaintext_bytes") as ei:
        await alice.send_dm(seed.gateway.pubkey, "x" * 60_001)
    assert ei.value.permanent
    assert len(broker.queue_rows()) == before


async def test_no_connected_peer_retries_within_window_then_is_permanent(broker, make_peer):
    seed = broker.default_mesh
    alice = await make_peer(seed.alice, backoff=[0.05])
    nobody = KeyPair.generate().public_hex
    with pytest.raises(DeliveryError, match="no connected peer") as ei:
        await alice.send_dm(nobody, "hello?", retry_window=0.3)
    assert ei.value.permanent
    with pytest.raises(DeliveryError, match="64-hex pubkey"):
        await alice.send_dm("alice", "names are resolved first")


async def test_blocked_by_grants_is_permanent(broker, make_peer):
    seed = broker.default_mesh
    gw = await make_peer(seed.gateway)
    alice = await make_peer(seed.alice)
    broker.set_grants(seed.mesh_id, seed.gateway.member_id, seed.alice.pubkey, ["read"])
    with pytest.raises(DeliveryError, match="does not accept our DMs") as ei:
        await alice.send_dm(gw.session_pubkey, "let me in")
    assert ei.value.permanent


async def test_dm_reaches_a_late_peer_within_the_retry_window(broker, make_peer, new_inbox):
    import asyncio

    seed = broker.default_mesh
    alice = await make_peer(seed.alice, backoff=[0.1])
    inbox = new_inbox()
    bob_kp = seed.bob
    task = asyncio.create_task(alice.send_dm(bob_kp.pubkey, "when you are back", retry_window=10))
    await asyncio.sleep(0.3)
    assert not task.done()
    await make_peer(seed.bob, on_message=inbox)
    assert await asyncio.wait_for(task, 10)
    await inbox.wait(1)
    assert inbox.texts == ["when you are back"]
