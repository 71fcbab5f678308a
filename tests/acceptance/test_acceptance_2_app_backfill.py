"""#2 "500 posts made while the gateway is down are all ingested after restart with no duplicate and
no gap", at the level of the whole gateway process (SQLite store, the cursor it persists, routing,
delivery to a webhook sink) rather than one MeshPeer with an in-memory kv
(tests/mesh/test_mesh_topics.py::test_backlog_after_downtime_no_duplicate_no_gap)."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import FAST_POLL, WH_SECRET, start_app_from_file, wait_until

pytestmark = pytest.mark.timeout(100)


async def test_500_posts_while_the_gateway_is_down_reach_the_sink_once_each_after_restart(
        file_app, dev_broker, sink, member):
    dev_broker.set_rate_limit(1000, 600_000)
    client, runtime, path = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.2, "poll_interval": 0.5},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general", "direction": "out",
                    "binds": [{"gateway": "wh", "chat": "out", "options": {"url": sink.url("out")}}]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    alice = await member("dev_alice")
    await alice.post_topic("general", "before the outage")
    await wait_until(lambda: sink.texts("out") == ["alice: before the outage"], 20, "the first post")
    await client.close()  # the gateway is down

    from claudemesh_gateway.mesh import MeshPeer
    from claudemesh_gateway.mesh.config import MeshConfig
    from claudemesh_gateway.mesh.state import MemoryKV
    from claudemesh_gateway.testing import dev_mesh_tables

    tables = dev_mesh_tables(dev_broker.state_dir)
    fast = MeshPeer("dev_bob", MeshConfig.model_validate({**tables["dev_bob"], **FAST_POLL, "rate_burst": 1000,
                                                          "rate_per_minute": 600_000}),
                    kv=MemoryKV(), identity="cli")
    await fast.start()
    try:
        await fast.wait_connected(10)
        texts = [f"while down {i}" for i in range(500)]
        for t in texts:
            assert await fast.post_topic("general", t)
    finally:
        await fast.stop()
    assert len(sink.received["out"]) == 1

    client2, runtime2 = await start_app_from_file(path)  # same config, same SQLite store
    try:
        await runtime2.meshes["dev"].wait_connected(10)
        await wait_until(lambda: len(sink.received["out"]) >= 501, 60, "the backlog at the sink")
        await asyncio.sleep(1.5)  # a few more polls: nothing else may arrive
        got = sink.texts("out")
        assert got[0] == "alice: before the outage"
        rest = got[1:]
        assert len(rest) == len(set(rest)) == 500, f"{len(rest)} deliveries, {len(set(rest))} distinct"
        assert set(rest) == {f"bob: {t}" for t in texts}, "gap: some posts made during the outage are missing"
        assert sink.bad_signatures == 0
    finally:
        await client2.close()
