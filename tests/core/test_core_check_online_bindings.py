"""``check --online``: each gateway's ``check()`` runs with its bindings from the route table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aiohttp
from claudemesh_gateway import hookimpl
from claudemesh_gateway.app import online_problems
from claudemesh_gateway.plugin_manager import make_plugin_manager
from claudemesh_gateway.settings import settings_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from core_fakes import MemoryGateway


class BindingsReportingGateway(MemoryGateway):
    kind = "bindings_report"

    async def check(self) -> list[str]:
        return [f"bound to {b.address.chat}" for b in self.ctx.bindings] or ["no bindings"]


class _Plugin:
    @hookimpl
    def register_gateways(self, register: Any) -> None:
        register(BindingsReportingGateway)


async def test_gateway_check_sees_its_bindings(tmp_path: Path) -> None:
    settings = settings_from_dict({
        "server": {"state_dir": str(tmp_path)},
        "gateways": {"a": {"type": "bindings_report"}, "b": {"type": "bindings_report"},
                     "idle": {"type": "bindings_report"}},
        "routes": [
            {"name": "r1", "binds": [{"gateway": "a", "chat": "room-1"}, {"gateway": "b", "chat": "room-2"}]},
            {"name": "r2", "binds": [{"gateway": "a", "chat": "room-3"}, {"gateway": "b", "chat": "room-2"}]},
        ],
    })
    pm = make_plugin_manager(entry_points=False, builtins=False, plugins=[("report", _Plugin())])
    async with aiohttp.ClientSession() as http:
        problems, warnings = await online_problems(settings, pm, http)
    assert problems == []
    assert sorted(w for w in warnings if w.startswith("gateways.a:")) == [
        "gateways.a: bound to room-1", "gateways.a: bound to room-3"]
    assert {w for w in warnings if w.startswith("gateways.b:")} == {"gateways.b: bound to room-2"}
    assert "gateways.idle: no bindings" in warnings


async def test_context_public_url_is_the_server_setting(tmp_path: Path) -> None:
    from claudemesh_gateway.runtime import Runtime
    from claudemesh_gateway.testing import RecordingContext

    settings = settings_from_dict({"server": {"state_dir": str(tmp_path), "public_url": "https://gw.example.org/"}})
    pm = make_plugin_manager(entry_points=False, builtins=False)
    assert Runtime(settings, pm).context_for("x").public_url == "https://gw.example.org"
    bare = settings_from_dict({"server": {"state_dir": str(tmp_path)}})
    assert Runtime(bare, pm).context_for("x").public_url is None
    async with aiohttp.ClientSession() as http:
        ctx = RecordingContext("x", http)
        assert ctx.public_url is None
        ctx.public_url = "https://a.example"
        assert RecordingContext("y", http, public_url="https://b.example").public_url == "https://b.example"
