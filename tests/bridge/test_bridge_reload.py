"""Config reloads (a real file on disk + ``reload_config``) with a bridge: the far mesh no route
names stays connected, a far mesh whose table changed is reconnected with the bridge's topics
and dispatcher, and a removed bridge's subscriptions (and far mesh) go away."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from claudemesh_gateway.app import RUNTIME, create_app, reload_config
from claudemesh_gateway.plugin_manager import make_plugin_manager
from claudemesh_gateway.settings import load_settings

from .conftest import DELIVERY, mesh_section, two_way, wait_until


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(v)  # strings, numbers, booleans: JSON spelling is valid TOML


def to_toml(cfg: dict[str, Any]) -> str:
    """Just enough TOML for these configs: tables of tables, and ``[[routes]]``."""
    lines: list[str] = []
    for section in ("server", "delivery"):
        if section in cfg:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_value(v)}" for k, v in cfg[section].items()]
    for section in ("mesh", "gateways"):
        for name, table in cfg.get(section, {}).items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {_value(v)}" for k, v in table.items()]
    for route in cfg.get("routes", []):
        lines.append("[[routes]]")
        lines += [f"{k} = {_value(v)}" for k, v in route.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def reloadable(tmp_path: Path, net):
    """``client, rt, write = await reloadable(config)``; ``write(config)`` rewrites the file."""
    clients: list[TestClient] = []
    path = tmp_path / "gw.toml"

    def write(config: dict[str, Any], meshes: dict[str, Any] | None = None, **mesh_extra: Any) -> None:
        full = {"server": {"state_dir": str(tmp_path / "var"), "shutdown_timeout": 5.0},
                "delivery": DELIVERY, **config,
                "mesh": mesh_section(net, meshes or {"a": "a", "b": "b"}, **mesh_extra)}
        path.write_text(to_toml(full))

    async def make(config: dict[str, Any], meshes: dict[str, Any] | None = None) -> tuple[TestClient, Any, Any]:
        write(config, meshes)
        app = create_app(load_settings(path), make_plugin_manager(entry_points=False, builtins=True))
        client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client, app[RUNTIME], write

    yield make
    for c in clients:
        await c.close()


def _polled(rt: Any, mesh: str, topic: str) -> bool:
    peer = rt.meshes.get(mesh)
    poller = peer.pollers.get(topic) if peer is not None else None
    return poller is not None and poller.initialized


def _config(routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"gateways": {"to_b": {"type": "bridge", "mesh": "b"}}, "routes": two_way() if routes is None else routes}


async def test_far_mesh_survives_a_routes_reload_and_is_resubscribed_after_its_table_changes(net, reloadable):
    _client, rt, write = await reloadable(_config())
    await wait_until(lambda: _polled(rt, "a", "general") and _polled(rt, "b", "lobby"), what="both topics polled")
    assert rt.mesh_subscribers.topics("b") == {"lobby"} and rt.mesh_subscribers.gateways("b") == {"to_b"}
    far = rt.meshes["b"]

    # (a) no route names mesh b; the bridge reads it: a reload that only touches routes keeps it
    write(_config(two_way(tags=["x"])))
    result = await reload_config(rt, actor="test")
    assert result["ok"], result
    assert "b" not in result["meshes"]["stopped"] and rt.meshes["b"] is far
    bob = await net.member("b_bob")
    alice = await net.member("a_alice")
    await bob.post_topic("lobby", "after the routes reload")
    await wait_until(lambda: any(r["sender"] == "gateway" for r in net.rows("a", "general")),
                     what="bob's post carried to A")

    # (b) mesh b's table changes: a new peer, with the bridge's dispatcher and #lobby watched again
    write(_config(two_way(tags=["x"])), b={"roster_refresh": 0.7})
    result = await reload_config(rt, actor="test")
    assert result["ok"], result
    assert result["meshes"]["restarted"] == ["b"]
    assert rt.meshes["b"] is not far
    await wait_until(lambda: _polled(rt, "b", "lobby"), what="#lobby polled by the new peer")
    assert getattr(rt.meshes["b"].on_message, "_mesh_subscribers_dispatch", False)
    await bob.post_topic("lobby", "after the table changed")
    await wait_until(lambda: len([r for r in net.rows("a", "general") if r["sender"] == "gateway"]) == 2,
                     what="bob's second post carried to A")
    await alice.post_topic("general", "and from A")
    await wait_until(lambda: any(r["sender"] == "gateway" for r in net.rows("b", "lobby")),
                     what="alice's post carried to B")
    assert [r["text"] for r in net.rows("a", "general") if r["sender"] == "gateway"] == [
        "__cmh1:bob @ b: after the routes reload", "__cmh1:bob @ b: after the table changed"]


async def test_send_only_bridge_keeps_its_far_mesh_across_a_reload(net, reloadable):
    out_only = [{"name": "a-to-b", "mesh": "a", "topic": "general", "direction": "out",
                 "binds": [{"gateway": "to_b", "chat": "lobby"}]}]
    _client, rt, write = await reloadable(_config(out_only))
    await wait_until(lambda: _polled(rt, "a", "general") and "b" in rt.meshes, what="a polled, b connected")
    assert rt.mesh_subscribers.meshes() == set()  # nothing read from b: only the bridge's mesh_of names it
    far = rt.meshes["b"]
    write(_config([{**out_only[0], "tags": ["y"]}]))
    result = await reload_config(rt, actor="test")
    assert result["ok"], result
    assert rt.meshes.get("b") is far
    alice = await net.member("a_alice")
    await alice.post_topic("general", "one way")
    await wait_until(lambda: any(r["sender"] == "gateway" for r in net.rows("b", "lobby")), what="post on B")


async def test_removed_bridge_drops_its_subscriptions_and_far_mesh(net, reloadable):
    meshes = {"a": "a", "b": "b", "c": "c"}
    to_c = {"name": "a-to-c", "mesh": "a", "topic": "general", "direction": "out",
            "binds": [{"gateway": "to_c", "chat": "lobby"}]}
    both = {"gateways": {"to_b": {"type": "bridge", "mesh": "b"}, "to_c": {"type": "bridge", "mesh": "c"}},
            "routes": [*two_way(), to_c]}
    _client, rt, write = await reloadable(both, meshes=meshes)
    await wait_until(lambda: _polled(rt, "a", "general") and _polled(rt, "b", "lobby") and "c" in rt.meshes,
                     what="a and b polled, c connected")
    write({"gateways": {"to_c": {"type": "bridge", "mesh": "c"}}, "routes": [to_c]}, meshes=meshes)
    result = await reload_config(rt, actor="test")
    assert result["ok"], result
    assert result["gateways"]["removed"] == ["to_b"]
    assert rt.mesh_subscribers.gateways("b") == set() and rt.mesh_subscribers.topics("b") == set()
    assert result["meshes"]["stopped"] == ["b"] and "b" not in rt.meshes
    assert {"a", "c"} <= set(rt.meshes)
