"""#8 readiness and metrics on the REAL app (tests/web covers the handlers against a fake runtime):
- /-/ready flips to 503 when a topic poller silently stalls (socket up, topic_history never answered)
  and back to 200 when polls complete again;
- /-/ready flips to 503 when a real gateway dies (a Telegram bot whose Bot API goes away) and back;
- metric values after a known traffic pattern through the real pipeline and delivery engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FAST_POLL, WH_SECRET, post_inbound, wait_until

P = "claudemesh_gateway_"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def ready(client) -> tuple[int, list[str]]:
    resp = await client.get("/-/ready")
    return resp.status, (await resp.json())["problems"]


async def wait_ready(client, want: int, limit_s: float = 20.0) -> list[str]:
    problems: list[str] = []
    async with asyncio.timeout(limit_s):
        while True:
            status, problems = await ready(client)
            if status == want:
                return problems
            await asyncio.sleep(0.1)


async def test_ready_flips_on_a_silently_stalled_topic_poller(file_app, dev_broker, sink, monkeypatch):
    from claudemesh_gateway.devbroker import broker as broker_mod

    client, runtime, _ = await file_app({
        "health": {"poll_stall_after_s": 1.5},
        "mesh": {"dev": FAST_POLL},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general", "direction": "out",
                    "binds": [{"gateway": "wh", "chat": "out", "options": {"url": sink.url("out")}}]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    assert await wait_ready(client, 200) == []

    async def silent(b: Any, conn: Any, msg: dict[str, Any]) -> None:  # the broker stops answering polls
        return None

    monkeypatch.setitem(broker_mod.HANDLERS, "topic_history", silent)
    problems = await wait_ready(client, 503)
    assert any(p.startswith("mesh dev topic general: last completed poll") for p in problems), problems
    health = await (await client.get("/-/health")).json()
    assert health["meshes"]["dev"]["state"] == "connected", "the stall must be silent (socket still up)"

    monkeypatch.undo()  # polls complete again
    assert await wait_ready(client, 200, 30) == []


class FakeBotAPI:
    """Just enough of the Bot API for a polling bot to be CONNECTED; ``down`` makes it answer 502."""

    def __init__(self) -> None:
        self.down = False

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=502, text="Bad Gateway")
        method = request.match_info["method"]
        if method == "getMe":
            result: Any = {"id": 42, "is_bot": True, "first_name": "acc", "username": "acc_bot",
                           "can_join_groups": True, "can_read_all_group_messages": True,
                           "supports_inline_queries": False}
        elif method == "getUpdates":
            await asyncio.sleep(0.2)
            result = []
        elif method == "getWebhookInfo":
            result = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
        else:
            result = True
        return web.json_response({"ok": True, "result": result})


async def test_ready_flips_on_a_dead_gateway(file_app, aiohttp_server, sink):
    api = FakeBotAPI()
    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", api.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    client, runtime, _ = await file_app({
        "gateways": {
            "tg": {"type": "telegram", "token": "123456:acceptance-token-abcdefghijklmnop",
                   "api_base": str(server.make_url("")).rstrip("/"), "poll_timeout": 0, "set_commands": False},
            "wh": {"type": "webhook", "secret": WH_SECRET},
        },
        "routes": [{"name": "tg", "binds": [{"gateway": "tg", "chat": "-100123", "direction": "in"},
                                            {"gateway": "wh", "chat": "out", "direction": "out",
                                             "options": {"url": sink.url("out")}}]}],
    })
    assert await wait_ready(client, 200) == []
    assert runtime.states["tg"][0] == "connected"

    api.down = True
    problems = await wait_ready(client, 503, 30)
    assert any(p.startswith("gateway tg is ") for p in problems), problems
    health = await (await client.get("/-/health")).json()
    assert health["gateways"]["tg"]["state"] != "connected" and health["status"] == "alive"

    api.down = False
    assert await wait_ready(client, 200, 30) == []


async def test_metric_values_after_a_known_traffic_pattern(file_app, dev_broker, sink, member):
    sink.script["bad"] = lambda body, n: (400, {})
    sink.script["slow"] = lambda body, n: (429, {"Retry-After": "1"}) if n == 1 else (200, {})
    client, runtime, _ = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.1, "max_attempts": 1, "poll_interval": 0.5,
                     "retry_after_floor": 0.1},
        "routes": [
            {"name": "ok", "binds": [{"gateway": "wh", "chat": "src-ok", "direction": "in"},
                                     {"gateway": "wh", "chat": "good", "direction": "out",
                                      "options": {"url": sink.url("good")}}]},
            {"name": "ko", "binds": [{"gateway": "wh", "chat": "src-ko", "direction": "in"},
                                     {"gateway": "wh", "chat": "bad", "direction": "out",
                                      "options": {"url": sink.url("bad")}}]},
            {"name": "th", "binds": [{"gateway": "wh", "chat": "src-th", "direction": "in"},
                                     {"gateway": "wh", "chat": "slow", "direction": "out",
                                      "options": {"url": sink.url("slow")}}]},
            {"name": "general", "mesh": "dev", "topic": "general", "direction": "out",
             "binds": [{"gateway": "wh", "chat": "mesh-out", "options": {"url": sink.url("mesh-out")}}]},
        ],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    for i in range(3):
        await post_inbound(client, "src-ok", {"id": f"ok{i}", "sender": "ann", "text": f"ok {i}"})
    for i in range(2):
        await post_inbound(client, "src-ko", {"id": f"ko{i}", "sender": "ann", "text": f"ko {i}"})
    await post_inbound(client, "src-th", {"id": "th0", "sender": "ann", "text": "throttled once"})
    dup = await post_inbound(client, "src-ok", {"id": "ok0", "sender": "ann", "text": "ok 0"})
    assert dup["status"] == "duplicate", dup
    alice = await member("dev_alice")
    await alice.post_topic("general", "from the mesh")

    await wait_until(lambda: len(sink.received["good"]) == 3 and sink.received["slow"] and sink.received["mesh-out"],
                     30, "deliveries")
    async with asyncio.timeout(20):
        while await runtime.store.dlq_count() < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    s = samples(await (await client.get("/-/metrics")).text())

    def val(name: str, **labels: str) -> float:
        return s.get((P + name, tuple(sorted(labels.items()))), 0.0)

    assert val("messages_queued_total", route="ok", gateway="wh") == 3
    assert val("messages_delivered_total", route="ok", gateway="wh") == 3
    assert val("messages_queued_total", route="ko", gateway="wh") == 2
    assert val("messages_delivered_total", route="ko", gateway="wh") == 0
    assert val("delivery_failures_total", route="ko", gateway="wh", kind="permanent") == 2
    assert val("messages_delivered_total", route="th", gateway="wh") == 1
    assert val("messages_delivered_total", route="general", gateway="wh") == 1
    assert val("delivery_latency_seconds_count", gateway="wh") == 5
    assert val("dead_letters") == 2
    assert val("vendor_429") == 1
    assert val("component_up", component="dev", kind="mesh") == 1
    assert val("component_up", component="wh", kind="gateway") == 1
    assert val("mesh_poll_latency_seconds", mesh="dev", topic="general") > 0
    # 6 distinct inbound webhooks + 1 mesh topic post were received; the duplicate is not a new message
    assert val("messages_received_total", gateway="wh") == 6
    assert val("messages_received_total", gateway="mesh") == 1
    depths = {dict(labels)["lane"]: v for (name, labels), v in s.items() if name == P + "queue_depth"}
    assert all(v == 0 for v in depths.values()), depths  # everything delivered or dead-lettered


pytestmark = pytest.mark.timeout(90)
