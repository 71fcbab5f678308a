"""#8 "plaintext message bodies never logged above DEBUG": a message travels webhook -> mesh topic
(v3) -> a mesh peer, and to a sink that refuses it permanently (dead letter, DeliveryFailed) and one
that throttles it (429 + retry); a mesh post goes the other way (same sinks). Every record
at INFO and above, from every logger, must be free of the bodies."""

from __future__ import annotations

import asyncio
import logging

from .conftest import FAST_POLL, WH_SECRET, post_inbound, wait_until

BODY_IN = "zebra-quartz-body-from-webhook-7781"
BODY_MESH = "walrus-opal-body-from-mesh-5523"


async def test_message_bodies_are_not_logged_above_debug(file_app, dev_broker, member, sink, caplog):
    caplog.set_level(logging.INFO)
    sink.script["bad"] = lambda body, n: (400, {})
    sink.script["slow"] = lambda body, n: (429, {"Retry-After": "1"}) if n == 1 else (200, {})
    got: list = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")
    client, runtime, _ = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.1, "max_attempts": 1, "poll_interval": 0.5,
                     "retry_after_floor": 0.1},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general", "direction": "both", "binds": [
            {"gateway": "wh", "chat": "src", "direction": "in"},
            {"gateway": "wh", "chat": "bad", "direction": "out", "options": {"url": sink.url("bad")}},
            {"gateway": "wh", "chat": "slow", "direction": "out", "options": {"url": sink.url("slow")}},
        ]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    await post_inbound(client, "src", {"id": "b1", "sender": "ann", "text": BODY_IN})
    alice = await member("dev_alice")
    await alice.post_topic("general", BODY_MESH)
    await wait_until(lambda: any(BODY_IN in i.text for i in got), 20, "the webhook body at bob")
    await wait_until(lambda: len(sink.received["slow"]) == 2, 20, "both messages at the throttled sink")
    async with asyncio.timeout(20):
        while await runtime.store.dlq_count() < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud, "the flow logged nothing at INFO+ (the test would prove nothing)"
    leaks = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in loud
             if BODY_IN in r.getMessage() or BODY_MESH in r.getMessage()
             or (r.exc_text and (BODY_IN in r.exc_text or BODY_MESH in r.exc_text))]
    assert leaks == [], leaks
