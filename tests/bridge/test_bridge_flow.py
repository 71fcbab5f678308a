"""A:#general <-> B:#lobby through a bridge gateway, on two dev brokers: attribution, exactly once,
no echo, replies across the bridge, and bodyVersion 3 re-sealed under the far mesh's key."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import two_way, wait_until

MESHES = {"a": "a", "b": "b"}
READY = [("a", "general"), ("b", "lobby")]


def _config(**gw):
    return {"gateways": {"to_b": {"type": "bridge", "mesh": "b", **gw}}, "routes": two_way()}


def _by(rows, sender):
    return [r for r in rows if r["sender"] == sender]


async def test_bridge_both_ways_once_with_attribution(net, bridge_app):
    _client, rt = await bridge_app(_config(), meshes=MESHES, ready=READY)
    alice = await net.member("a_alice")
    bob = await net.member("b_bob")

    await alice.post_topic("general", "hello from A")
    await wait_until(lambda: _by(net.rows("b", "lobby"), "gateway"), what="A's post on B")
    await bob.post_topic("lobby", "hello from B")
    await wait_until(lambda: _by(net.rows("a", "general"), "gateway"), what="B's post on A")
    await asyncio.sleep(1.0)  # several poll rounds: an echo or a loop would show up now

    on_b = net.rows("b", "lobby")
    on_a = net.rows("a", "general")
    # who wrote it and on which mesh; the hop prefix marks one mesh crossing
    assert [r["text"] for r in _by(on_b, "gateway")] == ["__cmh1:alice @ a: hello from A"]
    assert [r["text"] for r in _by(on_a, "gateway")] == ["__cmh1:bob @ b: hello from B"]
    assert len(on_b) == 2 and len(on_a) == 2  # nothing else: no echo, no loop
    # the gateway's own posts were seen by its pollers and never taken in again
    assert rt.meshes["b"].pollers["lobby"].echoes >= 1
    assert rt.meshes["a"].pollers["general"].echoes >= 1
    assert await rt.store.dlq_count() == 0


async def test_bridge_hop_limit_stops_cmh2(net, bridge_app):
    _client, _rt = await bridge_app(_config(), meshes=MESHES, ready=READY)
    alice = await net.member("a_alice")
    bob = await net.member("b_bob")
    await alice.post_topic("general", "__cmh2:already two hops")
    await bob.post_topic("lobby", "__cmh2:two hops too")
    await alice.post_topic("general", "__cmh1:one hop")  # one more crossing is still allowed
    await wait_until(lambda: _by(net.rows("b", "lobby"), "gateway"), what="the one-hop message on B")
    await asyncio.sleep(1.0)
    assert [r["text"] for r in _by(net.rows("b", "lobby"), "gateway")] == ["__cmh2:alice @ a: one hop"]
    assert _by(net.rows("a", "general"), "gateway") == []


async def test_bridge_replies_keep_threading(net, bridge_app):
    _client, _rt = await bridge_app(_config(), meshes=MESHES, ready=READY)
    alice = await net.member("a_alice")
    bob = await net.member("b_bob")

    m = await alice.post_topic("general", "question from A")
    await wait_until(lambda: _by(net.rows("b", "lobby"), "gateway"), what="the question on B")
    copy_on_b = _by(net.rows("b", "lobby"), "gateway")[0]
    # bob answers the copy on B: on A, the answer threads under alice's original
    await asyncio.sleep(0.01)
    answer = await bob.post_topic("lobby", "answer from B", reply_to_id=copy_on_b["id"])
    await wait_until(lambda: _by(net.rows("a", "general"), "gateway"), what="the answer on A")
    copy_on_a = _by(net.rows("a", "general"), "gateway")[0]
    assert copy_on_a["text"] == "__cmh1:bob @ b: answer from B"
    assert copy_on_a["reply_to"] == m

    # alice answers the copy on A: on B, that threads under bob's original
    await asyncio.sleep(0.01)
    await alice.post_topic("general", "thanks", reply_to_id=copy_on_a["id"])
    await wait_until(lambda: len(_by(net.rows("b", "lobby"), "gateway")) == 2, what="the thanks on B")
    thanks = _by(net.rows("b", "lobby"), "gateway")[1]
    assert thanks["text"] == "__cmh1:alice @ a: thanks"
    assert thanks["reply_to"] == answer


async def test_bridge_reseals_v3_under_the_far_key(net, bridge_app):
    _client, _rt = await bridge_app(_config(), meshes=MESHES, ready=READY)
    alice = await net.member("a_alice")
    await alice.post_topic("general", "secret plans")
    await wait_until(lambda: net.raw_rows("b", "lobby"), what="the copy on B")

    original = net.raw_rows("a", "general")[-1]
    copy = net.raw_rows("b", "lobby")[-1]
    assert original.body_version == 3 and copy.body_version == 3
    assert b"secret" not in copy.ciphertext.encode()  # not plaintext on the far broker
    a_tid, b_tid = net.topic_ids[("a", "general")], net.topic_ids[("b", "lobby")]
    # a member of B opens it with B's HKDF topic key
    assert net.keyring("b").open("b", b_tid, "lobby", copy.nonce, copy.ciphertext, 3) == \
        "__cmh1:alice @ a: secret plans"
    # A's key cannot: neither A's own topic key nor B's derivation fed with A's root key
    assert net.keyring("a").open("a", a_tid, "general", copy.nonce, copy.ciphertext, 3) is None
    assert net.keyring("b", root_key_of="a").open("b", b_tid, "lobby", copy.nonce, copy.ciphertext, 3) is None
    # and the original on A is sealed with A's key only
    assert net.keyring("a").open("a", a_tid, "general", original.nonce, original.ciphertext, 3) == "secret plans"
    assert net.keyring("b").open("b", b_tid, "lobby", original.nonce, original.ciphertext, 3) is None


async def test_bridge_health_shows_far_mesh(net, bridge_app):
    client, rt = await bridge_app(_config(), meshes=MESHES, ready=READY)
    await wait_until(lambda: str(rt.states.get("to_b", ("",))[0]) == "connected", what="bridge connected")
    resp = await client.get("/-/health")
    body = await resp.json()
    assert body["gateways"]["to_b"]["state"] == "connected"
    assert body["meshes"]["b"]["state"] == "connected"  # the far mesh's own entry, topics polled
    assert "lobby" in body["meshes"]["b"]["topics"]
    ready = await client.get("/-/ready")
    assert ready.status == 200, await ready.text()


async def test_bridge_one_route_both_ways_with_mesh_address_chat(net, bridge_app):
    """One ``direction = "both"`` route; the binding spells the far topic ``b:#lobby``, so ``{chat}``
    names the source mesh and topic in either direction. Replies still thread."""
    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [{"name": "ab", "mesh": "a", "topic": "general", "attribution": "{sender} ({chat}): {text}",
                    "binds": [{"gateway": "to_b", "chat": "b:#lobby"}]}],
    }
    _client, _rt = await bridge_app(config, meshes=MESHES, ready=READY)
    alice = await net.member("a_alice")
    bob = await net.member("b_bob")
    m = await alice.post_topic("general", "ping")
    await wait_until(lambda: _by(net.rows("b", "lobby"), "gateway"), what="ping on B")
    copy = _by(net.rows("b", "lobby"), "gateway")[0]
    assert copy["text"] == "__cmh1:alice (a:#general): ping"
    await asyncio.sleep(0.01)
    await bob.post_topic("lobby", "pong", reply_to_id=copy["id"])
    await wait_until(lambda: _by(net.rows("a", "general"), "gateway"), what="pong on A")
    await asyncio.sleep(0.8)
    back = _by(net.rows("a", "general"), "gateway")
    assert [(r["text"], r["reply_to"]) for r in back] == [("__cmh1:bob (b:#lobby): pong", m)]
    assert len(net.rows("b", "lobby")) == 2


async def test_bridge_one_route_names_the_source_mesh_both_ways(net, bridge_app):
    """The recommended template: ONE ``direction = "both"`` route with ``{origin_mesh}`` tells each
    side which mesh a message was written on (``{mesh}`` would say ``a`` both ways)."""
    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [{"name": "ab", "mesh": "a", "topic": "general",
                    "attribution": "{sender} @ {origin_mesh} ({origin}, route {mesh}): {text}",
                    "binds": [{"gateway": "to_b", "chat": "lobby"}]}],
    }
    _client, _rt = await bridge_app(config, meshes=MESHES, ready=READY)
    alice = await net.member("a_alice")
    bob = await net.member("b_bob")
    await alice.post_topic("general", "hello from A")
    await wait_until(lambda: _by(net.rows("b", "lobby"), "gateway"), what="A's post on B")
    await bob.post_topic("lobby", "hello from B")
    await wait_until(lambda: _by(net.rows("a", "general"), "gateway"), what="B's post on A")
    await asyncio.sleep(0.8)
    assert [r["text"] for r in _by(net.rows("b", "lobby"), "gateway")] == [
        "__cmh1:alice @ a (mesh a, route a): hello from A"]
    assert [r["text"] for r in _by(net.rows("a", "general"), "gateway")] == [
        "__cmh1:bob @ b (mesh b, route a): hello from B"]


async def test_bridge_chat_on_another_mesh_is_refused(net, bridge_app):
    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [{"name": "ab", "mesh": "a", "topic": "general", "binds": [{"gateway": "to_b", "chat": "c:#lobby"}]}],
    }
    with pytest.raises(Exception) as info:
        await bridge_app(config, meshes=MESHES)
    assert "names mesh 'c'" in str(info.value)


async def test_bridge_long_message_every_part_carries_the_hop_count(net, bridge_app):
    config = {"gateways": {"to_b": {"type": "bridge", "mesh": "b", "max_text": 200}}, "routes": two_way()}
    _client, _rt = await bridge_app(config, meshes=MESHES, ready=READY)
    alice = await net.member("a_alice")
    words = " ".join(f"w{i:03d}é😀" for i in range(60))  # ~480 characters, multi-byte
    await alice.post_topic("general", words)
    await wait_until(lambda: len(net.rows("b", "lobby")) >= 3, what="the parts on B")
    await asyncio.sleep(0.5)
    parts = [r["text"] for r in net.rows("b", "lobby")]
    assert len(parts) == 3
    assert all(p.startswith("__cmh1:") for p in parts), parts
    assert all(len(p) <= 200 + len("__cmh1:") for p in parts)
    body = " ".join(p.removeprefix("__cmh1:") for p in parts)
    for i in range(60):
        assert f"w{i:03d}é😀" in body


async def test_bridge_send_only_connects_at_start(net, bridge_app):
    """A bridge with only outbound bindings reads nothing on B, yet connects B at start (health)."""
    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [{"name": "ab", "mesh": "a", "topic": "general", "direction": "out",
                    "binds": [{"gateway": "to_b", "chat": "lobby"}]}],
    }
    _client, rt = await bridge_app(config, meshes=MESHES, ready=[("a", "general")])
    await wait_until(lambda: str(rt.states.get("to_b", ("",))[0]) == "connected", what="bridge connected")
    assert "lobby" not in rt.meshes["b"].pollers
    alice = await net.member("a_alice")
    bob = await net.member("b_bob")
    await alice.post_topic("general", "one way")
    await bob.post_topic("lobby", "not carried back")
    await wait_until(lambda: len(net.rows("b", "lobby")) == 2, what="the post on B")
    await asyncio.sleep(0.6)
    assert [r["text"] for r in net.rows("a", "general")] == ["one way"]


async def test_bridge_reads_far_topics_bound_by_a_routes_reload(net, bridge_app):
    """A reload that only changes routes swaps the route table and keeps the bridge running: the
    bridge starts reading a far topic an inbound binding gained."""
    from claudemesh_gateway.routing.table import RouteTable

    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [{"name": "ab", "mesh": "a", "topic": "general", "direction": "out",
                    "binds": [{"gateway": "to_b", "chat": "lobby"}]}],
    }
    _client, rt = await bridge_app(config, meshes=MESHES, ready=[("a", "general")])
    await wait_until(lambda: str(rt.states.get("to_b", ("",))[0]) == "connected", what="bridge connected")
    assert "lobby" not in rt.meshes["b"].pollers
    both = [{"name": "ab", "mesh": "a", "topic": "general", "binds": [{"gateway": "to_b", "chat": "lobby"}]}]
    rt.routes = RouteTable.build(both, gateways=rt.gateways, meshes=rt.settings.mesh)  # as reload_config does
    await wait_until(lambda: "lobby" in rt.meshes["b"].pollers and rt.meshes["b"].pollers["lobby"].initialized,
                     what="#lobby read after the reload")
    bob = await net.member("b_bob")
    await bob.post_topic("lobby", "now both ways")
    await wait_until(lambda: net.rows("a", "general"), what="bob's post on A")
    assert [r["text"] for r in net.rows("a", "general")] == ["__cmh1:bob: now both ways"]
