"""The far mesh's broker goes away: the bridge shows it in health, A's other traffic keeps flowing,
and what was posted on A meanwhile reaches B once the broker is back, in order, none lost."""

from __future__ import annotations

import asyncio

from .conftest import wait_until


async def test_bridge_far_broker_outage(net, bridge_app):
    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [
            {"name": "ab", "mesh": "a", "topic": "general", "binds": [{"gateway": "to_b", "chat": "lobby"}]},
            # A's other traffic: into mesh C on the first broker (a core mesh destination)
            {"name": "ac", "mesh": "a", "topic": "general", "direction": "out",
             "binds": [{"gateway": "mesh", "chat": "c:#lobby"}]},
        ],
    }
    client, rt = await bridge_app(config, meshes={"a": "a", "b": "b", "c": "c"},
                                  ready=[("a", "general"), ("b", "lobby")])
    alice = await net.member("a_alice")

    def state() -> str:
        return str(rt.states.get("to_b", ("",))[0])

    await wait_until(lambda: state() == "connected", what="bridge connected")
    await alice.post_topic("general", "before")
    await wait_until(lambda: len(net.rows("b", "lobby")) == 1, what="'before' on B")

    await net.b2.stop()
    await wait_until(lambda: state() == "transient_disconnect", what="bridge reports the outage")
    health = await (await client.get("/-/health")).json()
    assert health["gateways"]["to_b"]["state"] == "transient_disconnect"
    assert "mesh b" in health["gateways"]["to_b"]["detail"]
    assert (await client.get("/-/ready")).status == 503

    texts = [f"during {i}" for i in range(5)]
    for t in texts:
        await alice.post_topic("general", t)
        await asyncio.sleep(0.01)  # distinct ms: history order is creation order
    # A's other destinations are not held up by B's outage
    await wait_until(lambda: len(net.rows("c", "lobby")) == 6, what="A's traffic to C during the outage")
    assert [r["text"] for r in net.rows("c", "lobby")] == [f"__cmh1:alice: {t}" for t in ["before", *texts]]
    await asyncio.sleep(0.5)  # B is still down: its lane retries and nothing is dead-lettered
    assert await rt.store.dlq_count() == 0

    await net.restart_b2()
    await wait_until(lambda: len(net.rows("b", "lobby")) == 6, limit_s=20, what="the backlog on B")
    await wait_until(lambda: state() == "connected", what="bridge connected again")
    await asyncio.sleep(0.8)
    assert [r["text"] for r in net.rows("b", "lobby")] == [f"__cmh1:alice: {t}" for t in ["before", *texts]]
    assert await rt.store.dlq_count() == 0
    assert net.rows("a", "general")[-1]["text"] == "during 4"  # nothing came back to A
    assert len(net.rows("a", "general")) == 6


async def test_bridge_reconnects_a_far_mesh_stopped_under_it(net, bridge_app):
    """A config reload stops meshes no route lists (today the core does not count bridges' meshes):
    the bridge connects its mesh again and carries on from its cursor; nothing posted meanwhile is lost."""
    from claudemesh_gateway.meshes import stop_mesh

    config = {"gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
              "routes": [{"name": "ab", "mesh": "a", "topic": "general",
                          "binds": [{"gateway": "to_b", "chat": "lobby"}]}]}
    _client, rt = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("a", "general"), ("b", "lobby")])
    bob = await net.member("b_bob")
    alice = await net.member("a_alice")
    old = rt.meshes["b"]
    await stop_mesh(rt, "b")  # what _reload_meshes does to a mesh it thinks unused
    await bob.post_topic("lobby", "while b was stopped")

    def back() -> bool:
        peer = rt.meshes.get("b")
        return peer is not None and peer is not old and "lobby" in peer.pollers and peer.pollers["lobby"].initialized

    await wait_until(back, what="mesh b connected again with #lobby polled")
    await wait_until(lambda: [r for r in net.rows("a", "general") if r["sender"] == "gateway"], what="bob's post on A")
    await alice.post_topic("general", "and back")
    await wait_until(lambda: len(net.rows("b", "lobby")) == 2, what="alice's post on B")
    await asyncio.sleep(0.6)
    assert [r["text"] for r in net.rows("a", "general")] == ["__cmh1:bob: while b was stopped", "and back"]
    assert [r["text"] for r in net.rows("b", "lobby")] == ["while b was stopped", "__cmh1:alice: and back"]
    assert str(rt.states["to_b"][0]) == "connected"


async def test_bridge_far_identity_refused_is_bad_credentials(net, bridge_app):
    table = net.identity("b", "revoked-gw")
    net.b2.revoke_member(table["mesh_id"], table["member_id"])
    config = {"gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
              "routes": [{"name": "ab", "mesh": "a", "topic": "general",
                          "binds": [{"gateway": "to_b", "chat": "lobby"}]}]}
    client, rt = await bridge_app(config, meshes={"a": "a", "b": table}, ready=[("a", "general")])
    await wait_until(lambda: str(rt.states.get("to_b", ("",))[0]) == "bad_credentials", what="bad credentials")
    health = await (await client.get("/-/health")).json()
    assert health["gateways"]["to_b"]["state"] == "bad_credentials"
    assert health["meshes"]["a"]["state"] == "connected"  # the near mesh is unaffected
