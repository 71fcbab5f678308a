"""One end-to-end test per hookspec (tests/core/test_core_hygiene.py checks that each has one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from claudemesh_gateway import Address, hookimpl
from claudemesh_gateway.errors import ConfigError, PluginError
from claudemesh_gateway.plugin_manager import make_plugin_manager
from core_fakes import MemoryGateway, post_in


async def test_hook_register_gateways(core_app: Any) -> None:
    _client, runtime = await core_app()
    assert type(runtime.gateways["a"]) is MemoryGateway and runtime.gateways["a"].name == "a"
    # an instance table naming a kind nobody registered is a config error, one line
    with pytest.raises(ConfigError, match=r"gateways.x.type: unknown gateway kind 'nope'"):
        await core_app({"gateways": {"x": {"type": "nope"}}})


async def test_hook_register_web_routes(core_app: Any) -> None:
    class Extra:
        @hookimpl
        def register_web_routes(self, app: web.Application) -> list[web.RouteDef]:
            async def ping(request: web.Request) -> web.Response:
                return web.json_response({"pong": True})
            return [web.get("/ping", ping)]

    client, _ = await core_app(plugins=[("extra", Extra())])
    resp = await client.get("/-/plugins/extra/ping")
    assert resp.status == 200 and await resp.json() == {"pong": True}
    assert (await client.get("/ping")).status == 404  # only under the plugin's prefix


async def test_hook_lifespan(core_app: Any, journal: list[str]) -> None:
    class Life:
        @hookimpl
        def lifespan(self, app: web.Application) -> Any:
            async def ctx(app: web.Application) -> Any:
                journal.append("up")
                yield
                journal.append("down")
            return ctx

    client, _ = await core_app(plugins=[("life", Life())])
    assert journal[-1] == "up" and journal.index("up") > journal.index("start:b")  # after the gateways
    await client.close()
    assert journal.index("down") < journal.index("stop:b")  # torn down before them


async def test_hook_allow_message(core_app: Any) -> None:
    class Veto:
        @hookimpl
        async def allow_message(self, message: Any) -> bool | None:
            return False if "spam" in message.text else None

    class Yes:
        @hookimpl
        def allow_message(self, message: Any) -> bool:
            return True  # one plugin's True never overrides another's veto

    client, runtime = await core_app(plugins=[("veto", Veto()), ("yes", Yes())])
    await post_in(client, "a", "1", "buy spam now")
    await post_in(client, "a", "2", "real news")
    sent = await runtime.gateways["b"].wait_sent(1)
    await asyncio.sleep(0.1)
    assert [o.text for o in sent] == ["alice: real news"]


async def test_hook_message_destinations(core_app: Any) -> None:
    class Fanout:
        @hookimpl
        def message_destinations(self, message: Any) -> list[Address]:
            return [Address("b", "audit"), Address("b", "audit")]  # de-duplicated

    client, runtime = await core_app(plugins=[("fanout", Fanout())])
    await post_in(client, "a", "1", "hello")
    sent = await runtime.gateways["b"].wait_sent(2)
    await asyncio.sleep(0.1)
    assert sorted(o.to.chat for o in runtime.gateways["b"].sent) == ["audit", "room"]
    assert len(sent) == 2


async def test_hook_render_text(core_app: Any) -> None:
    class Shout:
        @hookimpl
        def render_text(self, message: Any, text: str, gateway: Any) -> str | None:
            return text.upper() if gateway.name == "b" else None

    client, runtime = await core_app(plugins=[("shout", Shout())])
    await post_in(client, "a", "1", "quiet please")
    [out] = await runtime.gateways["b"].wait_sent(1)
    assert out.text == "ALICE: QUIET PLEASE"

    class AsyncRender:
        @hookimpl
        async def render_text(self, message: Any, text: str) -> str:
            return text

    with pytest.raises(PluginError, match="render_text\\(\\) must be a plain def"):
        make_plugin_manager(entry_points=False, builtins=False, plugins=[("bad", AsyncRender())])


async def test_hook_track_event(core_app: Any) -> None:
    seen: list[str] = []
    delivered = asyncio.Event()

    class Recorder:
        @hookimpl
        async def track_event(self, event: Any, app: web.Application) -> None:
            assert app is not None
            seen.append(event.name)
            if event.name == "message-delivered":
                delivered.set()

    class Broken:
        @hookimpl
        def track_event(self, event: Any) -> None:
            raise RuntimeError("observer bug")

    client, _runtime = await core_app(plugins=[("broken", Broken()), ("recorder", Recorder())])
    await post_in(client, "a", "1", "observe me")
    await asyncio.wait_for(delivered.wait(), 5)
    assert {"message-received", "message-queued", "message-delivered"} <= set(seen)
    assert "gateway-state-changed" in seen
    # one ordered dispatcher: observers see events in the order they happened
    assert seen.index("message-received") < seen.index("message-queued") < seen.index("message-delivered")
