"""Hot reload: validate first, then swap routes and restart only what changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from claudemesh_gateway import GatewayState
from claudemesh_gateway.app import RUNTIME, create_app, reload_config
from claudemesh_gateway.plugin_manager import make_plugin_manager
from claudemesh_gateway.settings import load_settings
from core_fakes import MemoryPlugin, post_in

BASE = """
[server]
state_dir = "{state}"
[gateways.a]
type = "memory"
[gateways.b]
type = "memory"
[[routes]]
name = "ab"
binds = [{{ gateway = "a", chat = "room" }}, {{ gateway = "b", chat = "room" }}]
"""


@pytest.fixture
async def served(tmp_path: Path, journal: list[str]) -> Any:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(BASE.format(state=tmp_path / "var"))
    pm = make_plugin_manager(entry_points=False, builtins=False, plugins=[("memtest", MemoryPlugin())])
    app = create_app(load_settings(cfg), pm)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    yield client, app[RUNTIME], cfg
    await client.close()


async def test_reload_swaps_routes_and_restarts_only_what_changed(served: Any, journal: list[str]) -> None:
    client, runtime, cfg = served
    old_a, old_b = runtime.gateways["a"], runtime.gateways["b"]
    text = cfg.read_text().replace('{ gateway = "b", chat = "room" }', '{ gateway = "b", chat = "lobby" }')
    text = text.replace('[gateways.b]\ntype = "memory"\n', '[gateways.b]\ntype = "memory"\nsignature = "another-sig-42"\n')
    cfg.write_text(text)
    journal.clear()
    result = await reload_config(runtime, actor="test")
    assert result["ok"] is True, result
    assert result["gateways"] == {"added": [], "removed": [], "restarted": ["b"]}
    assert result["restart_required"] == []
    assert runtime.gateways["a"] is old_a and runtime.gateways["b"] is not old_b
    assert journal == ["stop:b", "start:b"]
    assert runtime.states["b"][0] == GatewayState.CONNECTED

    # the new route: a/room -> b/lobby; b's webhook (same router) now reaches the new instance
    await post_in(client, "a", "1", "after reload")
    [out] = await runtime.gateways["b"].wait_sent(1)
    assert out.to.chat == "lobby"
    assert (await post_in(client, "b", "2", "old sig", chat="lobby")).status == 403
    assert (await post_in(client, "b", "3", "from b", chat="lobby", sig="another-sig-42")).status == 200
    await old_a.wait_sent(1)
    assert any(a.get("action") == "config.reload" for a in await runtime.store.audit_list(5))


async def test_new_gateway_with_webhooks_needs_a_restart(served: Any, journal: list[str]) -> None:
    _client, runtime, cfg = served
    cfg.write_text(cfg.read_text() + '[gateways.c]\ntype = "memory"\n')
    journal.clear()
    result = await reload_config(runtime, actor="test")
    assert result == {"ok": False, "errors": ["gateways.c: its webhook routes are new or changed; restart to apply"]}
    assert "c" not in runtime.gateways and journal == []


async def test_invalid_reload_keeps_the_running_config(served: Any, journal: list[str]) -> None:
    _client, runtime, cfg = served
    routes_before, settings_before = runtime.routes, runtime.settings
    cfg.write_text(cfg.read_text() + '[gateways.d]\ntype = "memory"\nsignatur = "x"\n')
    journal.clear()
    result = await reload_config(runtime, actor="test")
    assert result == {"ok": False, "errors": ["gateways.d.signatur: unknown key"]}
    assert runtime.routes is routes_before and runtime.settings is settings_before and journal == []


async def test_removed_gateway_stops_and_startup_tables_need_a_restart(served: Any, journal: list[str]) -> None:
    client, runtime, cfg = served
    cfg.write_text(BASE.format(state=Path(runtime.settings.server.state_dir)).replace(
        '[gateways.b]\ntype = "memory"\n', "").replace(', { gateway = "b", chat = "room" }', ', { gateway = "mesh", chat = "x:#y" }')
        .replace("[server]\n", "[server]\nport = 9999\n"))
    result = await reload_config(runtime, actor="test")
    assert result["ok"] is False and any("unknown mesh 'x'" in e for e in result["errors"])

    cfg.write_text(BASE.format(state=Path(runtime.settings.server.state_dir)).replace(
        '[gateways.b]\ntype = "memory"\n', "").replace(', { gateway = "b", chat = "room" }', ', { gateway = "a", chat = "r2" }')
        .replace("[server]\n", "[server]\nport = 9999\n"))
    journal.clear()
    result = await reload_config(runtime, actor="test")
    assert result["ok"] is True and result["gateways"]["removed"] == ["b"] and journal == ["stop:b"]
    assert result["restart_required"] == ["server"]
    assert (await post_in(client, "b", "1", "gone")).status == 404


async def test_store_trace_and_otel_tables_need_a_restart(served: Any, journal: list[str]) -> None:
    """The store, the trace recorder and the OpenTelemetry sink are built once, at startup."""
    _client, runtime, cfg = served
    cfg.write_text(cfg.read_text() + '\n[trace]\nflush_interval = 1.0\n\n[otel]\nservice_name = "gw-2"\n')
    result = await reload_config(runtime, actor="test")
    assert result["ok"] is True, result
    assert result["restart_required"] == ["trace", "otel"]
