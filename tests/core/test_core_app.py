"""The application factory and its lifecycle, with a throwaway gateway kind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from claudemesh_gateway import GatewayState, hookimpl
from claudemesh_gateway.errors import ConfigError, StartupError
from core_fakes import MemoryGateway, post_in


async def test_message_flows_between_two_gateways(core_app: Any, journal: list[str]) -> None:
    client, runtime = await core_app()
    a, b = runtime.gateways["a"], runtime.gateways["b"]
    assert isinstance(a, MemoryGateway) and journal == ["start:a", "start:b"]
    resp = await post_in(client, "a", "1", "hello")
    assert resp.status == 200 and (await resp.json())["status"] == "queued"
    [out] = await b.wait_sent(1)
    assert out.to.chat == "room" and "hello" in out.text and out.text.startswith("alice")
    assert a.sent == []  # never back to the origin
    again = await post_in(client, "a", "1", "hello")
    assert (await again.json())["status"] == "duplicate"


async def test_health_and_plugins_endpoints(core_app: Any) -> None:
    client, _runtime = await core_app()
    health = await (await client.get("/-/health")).json()
    components = health.get("gateways") or health.get("components")
    assert components["a"]["state"] == "connected" and components["b"]["state"] == "connected"
    plugins = await (await client.get("/-/plugins.json")).json()
    mem = next(p for p in plugins if p["name"] == "memtest")
    assert mem["hooks"] == ["register_gateways"]


async def test_shutdown_order_and_states(core_app: Any, journal: list[str]) -> None:
    events: list[str] = []

    class Life:
        @hookimpl
        def lifespan(self, app: Any) -> Any:
            async def ctx(app: Any) -> Any:
                journal.append("lifespan:up")
                yield
                journal.append("lifespan:down")
            return ctx

        @hookimpl
        def track_event(self, event: Any) -> None:
            if event.name == "gateway-state-changed":
                events.append(f"{event.gateway}:{event.state}")

    client, runtime = await core_app(plugins=[("life", Life())])
    assert journal == ["start:a", "start:b", "lifespan:up"]
    await client.close()
    assert journal == ["start:a", "start:b", "lifespan:up", "lifespan:down", "stop:b", "stop:a"]
    assert runtime.draining is True
    assert runtime.states["a"][0] == GatewayState.STOPPED and runtime.states["b"][0] == GatewayState.STOPPED
    assert runtime.http is None
    assert "a:connected" in events  # observers saw the transitions (delivered in the background)


async def test_gateway_start_failure_is_startup_error_and_cleans_up(core_app: Any, journal: list[str]) -> None:
    cfg = {
        "gateways": {"a": {"type": "memory"}, "b": {"type": "memory", "fail_start": True}},
        "routes": [{"name": "ab", "binds": [{"gateway": "a", "chat": "r"}, {"gateway": "b", "chat": "r"}]}],
    }
    with pytest.raises(StartupError, match="gateway b could not start: ConnectionError: vendor unreachable"):
        await core_app(cfg)
    assert journal == ["start:a", "start:b", "stop:a"]  # b never started, so it is never stopped


async def test_bad_gateway_tables_are_config_errors(core_app: Any) -> None:
    cfg = {
        "gateways": {"a": {"type": "memory", "signatur": "x"}, "c": {"type": "telegrm"}, "d": {}},
        "routes": [],
    }
    with pytest.raises(ConfigError) as info:
        await core_app(cfg)
    assert info.value.problems == [
        "gateways.a.signatur: unknown key",
        "gateways.c.type: unknown gateway kind 'telegrm' (installed kinds: memory)",
        "gateways.d: unknown gateway kind 'd' (installed kinds: memory)",
    ]


async def test_route_to_unknown_gateway_is_config_error(core_app: Any) -> None:
    cfg = {"gateways": {"a": {"type": "memory"}},
           "routes": [{"name": "r", "binds": [{"gateway": "a", "chat": "x"}, {"gateway": "zz", "chat": "y"}]}]}
    with pytest.raises(ConfigError) as info:
        await core_app(cfg)
    assert any("binds[1].gateway: unknown gateway 'zz'" in p for p in info.value.problems)


async def test_error_middleware_hides_internals_and_webhook_auth(core_app: Any) -> None:
    client, runtime = await core_app()
    resp = await client.get("/gateways/a/boom")
    assert resp.status == 500
    assert await resp.json() == {"error": "internal server error"}
    bad = await post_in(client, "a", "2", "x", sig="wrong")
    assert bad.status == 403
    await asyncio.sleep(0.05)
    assert runtime.gateways["b"].sent == []


async def test_draining_answers_503_to_webhooks(core_app: Any) -> None:
    client, runtime = await core_app()
    runtime.draining = True
    resp = await post_in(client, "a", "3", "late")
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert (await client.get("/-/health")).status == 200  # the /-/ endpoints still answer


async def test_permanent_send_failure_becomes_dead_letter_and_event(core_app: Any) -> None:
    failed: list[Any] = []
    done = asyncio.Event()

    class Watch:
        @hookimpl
        def track_event(self, event: Any) -> None:
            if event.name == "delivery-failed":
                failed.append(event)
                done.set()

    cfg = {
        "gateways": {"a": {"type": "memory"}, "b": {"type": "memory", "fail_send": "permanent"}},
        "routes": [{"name": "ab", "binds": [{"gateway": "a", "chat": "r"}, {"gateway": "b", "chat": "r"}]}],
    }
    client, runtime = await core_app(cfg, plugins=[("watch", Watch())])
    await post_in(client, "a", "9", "doomed", chat="r")
    await asyncio.wait_for(done.wait(), 5)
    assert failed[0].permanent is True and failed[0].to.gateway == "b"
    assert await runtime.store.dlq_count() == 1


async def test_gateway_context_kv_and_bindings(core_app: Any) -> None:
    _client, runtime = await core_app()
    ctx = runtime.gateways["a"].ctx
    await ctx.kv_set("offset", {"n": 5})
    assert await ctx.kv_get("offset") == {"n": 5}
    assert await runtime.store.kv_get("gw:a", "offset") == {"n": 5}
    await ctx.kv_delete("offset")
    assert await ctx.kv_get("offset") is None
    [binding] = ctx.bindings
    assert binding.route == "ab" and binding.address.chat == "room" and binding.direction == "both"
