"""Metric values after a known traffic pattern; readiness flipping on stalls and dead components."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pluggy
import pytest
from aiohttp import web
from claudemesh_gateway import hookspecs
from claudemesh_gateway.events import (
    DeliveryFailed,
    GatewayState,
    MessageDelivered,
    MessageDropped,
    MessageQueued,
    MessageReceived,
)
from claudemesh_gateway.messages import Address, Message
from claudemesh_gateway.web import setup_web
from prometheus_client.parser import text_string_to_metric_families


class Peer:
    def __init__(self):
        self.reconnects = 2
        self.bad_frames = {"too_deep": 1}
        self.polls = {"general": {"last_poll_at": time.time(), "poll_latency": 0.012, "polls": 3}}

    def poll_stats(self):
        return self.polls


class Store:
    def __init__(self):
        self.depths = {}
        self.due = []

    async def outbox_depths(self):
        return self.depths

    async def ready_lanes(self, now):
        return self.due

    async def dlq_count(self):
        return 3


def runtime():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    now = time.time()
    stats = {"last_activity": now, "rate_limit_waits": 4, "throttled": 1}
    return SimpleNamespace(
        settings=SimpleNamespace(admin=None, health={"stall_after_s": 30, "poll_stall_after_s": 20}), pm=pm,
        store=Store(), meshes={"dev": Peer()}, gateways={"webhook": object()},
        states={"dev": (GatewayState.CONNECTED, "", now), "webhook": (GatewayState.CONNECTED, "", now)},
        draining=False, started_at=now, delivery=SimpleNamespace(stats=lambda: stats), stats=stats,
        routes=SimpleNamespace(describe=list),
    )


@pytest.fixture
async def client(aiohttp_client):
    rt = runtime()
    app = web.Application()
    setup_web(app, rt)
    c = await aiohttp_client(app)
    c.rt = rt
    return c


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def msg(i, gw="telegram"):
    return Message(id=f"m{i}", origin=Address(gw, "1"), sender="a", text="x")


async def test_metric_values_after_known_traffic(client):
    hook = client.rt.pm.hook.track_event
    to = Address("webhook", "sink")
    for i in range(5):
        hook(event=MessageReceived(message=msg(i)), app=None)
        hook(event=MessageQueued(message=msg(i), to=to, route="r1"), app=None)
    for i in range(3):
        hook(event=MessageDelivered(message=msg(i), to=to, route="r1", latency_s=0.004), app=None)
    hook(event=DeliveryFailed(message=msg(3), to=to, route="r1", error="429", permanent=False), app=None)
    hook(event=DeliveryFailed(message=msg(4), to=to, route="r1", error="400", permanent=True), app=None)
    hook(event=MessageDropped(message=msg(9), reason="loop"), app=None)
    client.rt.store.depths = {"webhook/sink": (2, time.time() - 10)}
    s = samples(await (await client.get("/-/metrics")).text())
    p = "claudemesh_gateway_"
    assert s[(p + "messages_received_total", (("gateway", "telegram"),))] == 5
    assert s[(p + "messages_queued_total", (("gateway", "webhook"), ("route", "r1")))] == 5
    assert s[(p + "messages_delivered_total", (("gateway", "webhook"), ("route", "r1")))] == 3
    assert s[(p + "delivery_failures_total", (("gateway", "webhook"), ("kind", "transient"), ("route", "r1")))] == 1
    assert s[(p + "delivery_failures_total", (("gateway", "webhook"), ("kind", "permanent"), ("route", "r1")))] == 1
    assert s[(p + "messages_dropped_total", (("gateway", "telegram"), ("reason", "loop")))] == 1
    assert s[(p + "delivery_latency_seconds_count", (("gateway", "webhook"),))] == 3
    assert s[(p + "delivery_latency_seconds_bucket", (("gateway", "webhook"), ("le", "0.005")))] == 3
    assert s[(p + "queue_depth", (("lane", "webhook/sink"),))] == 2
    assert 9 <= s[(p + "queue_oldest_age_seconds", (("lane", "webhook/sink"),))] < 60
    assert s[(p + "dead_letters", ())] == 3
    assert s[(p + "rate_limit_waits", ())] == 4
    assert s[(p + "vendor_429", ())] == 1
    assert s[(p + "component_up", (("component", "dev"), ("kind", "mesh")))] == 1
    assert s[(p + "mesh_reconnects", (("mesh", "dev"),))] == 2
    assert s[(p + "mesh_bad_frames", (("mesh", "dev"), ("reason", "too_deep")))] == 1
    assert s[(p + "mesh_poll_latency_seconds", (("mesh", "dev"), ("topic", "general")))] == pytest.approx(0.012)
    # a lane that drained goes back to zero instead of keeping its last value
    client.rt.store.depths = {}
    s = samples(await (await client.get("/-/metrics")).text())
    assert s[(p + "queue_depth", (("lane", "webhook/sink"),))] == 0


async def test_observer_failure_does_not_hide_metrics(client):
    from claudemesh_gateway import hookimpl

    class Broken:
        @hookimpl
        def track_event(self, event):
            raise RuntimeError("boom")

    client.rt.pm.register(Broken(), name="broken")
    from claudemesh_gateway.web.appkeys import METRICS

    # the core calls observers one by one (plugin_manager.notify); the metrics observer works alone
    client.server.app[METRICS].observe(MessageReceived(message=msg(1)))
    s = samples(await (await client.get("/-/metrics")).text())
    assert s[("claudemesh_gateway_messages_received_total", (("gateway", "telegram"),))] == 1


async def test_ready_ok_then_flips_on_dead_gateway(client):
    resp = await client.get("/-/ready")
    assert resp.status == 200, await resp.text()
    client.rt.states["webhook"] = (GatewayState.TRANSIENT_DISCONNECT, "sink unreachable", time.time())
    resp = await client.get("/-/ready")
    body = await resp.json()
    assert resp.status == 503
    assert body["problems"] == ["gateway webhook is transient_disconnect (sink unreachable)"]
    health = await (await client.get("/-/health")).json()
    assert health["status"] == "alive" and health["gateways"]["webhook"]["state"] == "transient_disconnect"


async def test_ready_flips_on_stalled_poller(client):
    client.rt.meshes["dev"].polls["general"]["last_poll_at"] = time.time() - 120
    resp = await client.get("/-/ready")
    assert resp.status == 503
    assert any("topic general" in p and "last completed poll 120s ago" in p for p in (await resp.json())["problems"])
    client.rt.meshes["dev"].polls["general"]["last_poll_at"] = time.time()
    assert (await client.get("/-/ready")).status == 200


async def test_ready_flips_on_stalled_delivery_but_not_when_idle(client):
    old = time.time() - 300
    client.rt.stats["last_activity"] = old
    client.rt.started_at = old
    assert (await client.get("/-/ready")).status == 200  # nothing due: idle is not stalled
    client.rt.store.due = ["webhook/sink"]
    resp = await client.get("/-/ready")
    assert resp.status == 503
    assert "delivery stalled" in (await resp.json())["problems"][0]
    client.rt.stats["last_activity"] = time.time()
    assert (await client.get("/-/ready")).status == 200


async def test_ready_fails_while_draining(client):
    client.rt.draining = True
    resp = await client.get("/-/ready")
    assert resp.status == 503 and (await resp.json())["problems"] == ["shutting down"]


async def test_ready_names_a_database_store_outage_once(client):
    # a database store (ping) that knows it is down (write_problem): one line, no ping, no stall check
    pings = []

    async def ping(timeout):
        pings.append(timeout)
        return store.answers

    store = client.rt.store
    store.ping, store.answers, store.write_problem = ping, True, None
    assert (await client.get("/-/ready")).status == 200 and len(pings) == 1
    store.write_problem = "PostgreSQL db:5432/gw unavailable: ConnectionRefusedError"
    store.due = ["webhook/sink"]
    client.rt.stats["last_activity"] = client.rt.started_at = time.time() - 300
    resp = await client.get("/-/ready")
    assert resp.status == 503 and len(pings) == 1  # not pinged again
    assert (await resp.json())["problems"] == [f"store cannot write: {store.write_problem}"]
    # only the ping notices (nothing wrote yet): "does not answer", or the outage the failed ping started
    store.write_problem, store.answers = None, False
    assert (await (await client.get("/-/ready")).json())["problems"] == [
        "store unreachable (the database does not answer)"]

    async def ping_starts_the_outage(timeout):
        store.write_problem = "PostgreSQL db:5432/gw unavailable: TimeoutError"
        return False

    store.ping = ping_starts_the_outage
    assert (await (await client.get("/-/ready")).json())["problems"] == [
        "store cannot write: PostgreSQL db:5432/gw unavailable: TimeoutError"]
