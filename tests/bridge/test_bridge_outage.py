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
