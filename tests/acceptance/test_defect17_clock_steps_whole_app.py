"""Issue 17, "done when": against a broker whose clock is stepped forward and back, every post is
delivered exactly once. The whole app (config file, SQLite store, topic poller, routing, webhook
delivery) on the dev broker, whose clock (``DevBrokerConfig.clock_offset_ms``) runs 50 s fast, is put
right while running, runs fast again after a broker restart and is put right by another restart; the
gateway is restarted in between, with posts made while it is down. Each post is counted at the sink."""

from __future__ import annotations

import asyncio
import collections

import pytest
from claudemesh_gateway.devbroker import DevBroker, DevBrokerConfig

from .conftest import FAST_POLL, WH_SECRET, start_app_from_file, wait_until

pytestmark = pytest.mark.timeout(150)

FAST_MS = 50_000


async def _restart_broker(broker: DevBroker, offset_ms: int) -> DevBroker:
    port = broker.port
    await broker.stop()
    fresh = DevBroker(broker.state_dir, port=port or 0,
                      config=DevBrokerConfig(persist_debounce_s=0.01, clock_offset_ms=offset_ms))
    await fresh.start()
    fresh.set_rate_limit(1000, 600_000)
    return fresh


async def test_every_post_reaches_the_sink_once_while_the_broker_clock_steps_forward_and_back(
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
    await wait_until(lambda: "general" in runtime.meshes["dev"].pollers
                     and runtime.meshes["dev"].pollers["general"].initialized, 15, "the topic poller")
    alice = await member("dev_alice")
    posted: list[str] = []
    broker = dev_broker

    async def post(phase: str, n: int = 3) -> None:
        for i in range(n):
            text = f"{phase} {i}"
            assert await alice.post_topic("general", text)
            posted.append(f"alice: {text}")

    async def arrived(what: str) -> None:
        await wait_until(lambda: len(sink.received["out"]) >= len(posted), 30, what)

    try:
        await post("right clock")
        await arrived("posts with the right clock")
        broker.config.clock_offset_ms = FAST_MS  # the clock steps 50 s forward
        await post("fast clock")
        await arrived("posts from the fast clock")
        broker.config.clock_offset_ms = 0  # ... and back: these sort under the fast ones
        await post("clock put right")
        await arrived("posts after the clock was put right")

        await client.close()  # the gateway is down: posts wait in the topic, under the fast ones
        await post("while the gateway is down")
        client, runtime = await start_app_from_file(path)  # same config, same SQLite window
        await runtime.meshes["dev"].wait_connected(10)
        await arrived("the posts made while the gateway was down")

        broker = await _restart_broker(broker, FAST_MS)  # restarted with a fast clock
        await alice.wait_connected(15)
        await runtime.meshes["dev"].wait_connected(15)
        await post("after a restart with a fast clock")
        await arrived("posts after the broker restarted fast")
        broker = await _restart_broker(broker, 0)  # restarted with the right clock
        await alice.wait_connected(15)
        await runtime.meshes["dev"].wait_connected(15)
        await post("after a restart with the right clock")
        await arrived("posts after the broker restarted with the right clock")

        poller = runtime.meshes["dev"].pollers["general"]
        polls = poller.polls
        await wait_until(lambda: poller.polls >= polls + 4, 15, "a few more polls")
        await asyncio.sleep(0.5)  # and the deliveries they might have queued
        counts = collections.Counter(sink.texts("out"))
        assert len(posted) == 18 and set(counts) == set(posted), "a post is missing (or a stranger arrived)"
        assert all(n == 1 for n in counts.values()), f"duplicates: {[t for t, n in counts.items() if n > 1]}"
        assert poller.skipped == {} and sink.bad_signatures == 0
    finally:
        await client.close()
        if broker is not dev_broker:
            await broker.stop()
