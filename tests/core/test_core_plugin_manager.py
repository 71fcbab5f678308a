"""Plugin manager: entry points before built-ins, loud clashes, disable, sync-only hooks, isolation."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway import Capabilities, Gateway, GatewayConfig, SendResult, hookimpl
from claudemesh_gateway import plugin_manager as pmod
from claudemesh_gateway.errors import PluginError
from claudemesh_gateway.events import Event
from claudemesh_gateway.plugin_manager import (
    gateway_kinds,
    make_plugin_manager,
    notify,
    plugin_info,
)


class FakeEntryPoint:
    group = "claudemesh_gateway"

    def __init__(self, name: str, obj: Any = None, error: Exception | None = None) -> None:
        self.name, self._obj, self._error = name, obj, error

    def load(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._obj


class FakeDist:
    def __init__(self, name: str, version: str, *eps: FakeEntryPoint) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = eps


@pytest.fixture
def dists(monkeypatch: pytest.MonkeyPatch) -> list[FakeDist]:
    found: list[FakeDist] = []
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(found))
    return found


def make_plugin(**hooks: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def test_entry_points_load_with_their_version(dists: list[FakeDist]) -> None:
    calls: list[str] = []
    plugin = make_plugin(track_event=lambda event: calls.append(event.name))
    dists.append(FakeDist("claudemesh-gateway-audit", "2.5.1", FakeEntryPoint("audit", plugin)))
    pm = make_plugin_manager(builtins=False)
    assert pm.get_plugin("audit") is plugin
    [info] = plugin_info(pm)
    assert info == {"name": "audit", "version": "2.5.1", "distribution": "claudemesh-gateway-audit",
                    "builtin": False, "hooks": ["track_event"]}


def test_builtins_load_from_the_name_map(dists: list[FakeDist]) -> None:
    pm = make_plugin_manager()
    names = {p["name"] for p in plugin_info(pm) if p["builtin"]}
    present = {n for n, mod in pmod.BUILTIN_PLUGINS.items() if importlib.util.find_spec(mod) is not None}
    assert names == present and "webhook" in pmod.BUILTIN_PLUGINS


def test_third_party_taking_a_builtin_name_is_loud(dists: list[FakeDist]) -> None:
    dists.append(FakeDist("evil", "1.0", FakeEntryPoint("telegram", make_plugin(track_event=lambda event: None))))
    with pytest.raises(PluginError, match="'telegram' is already taken"):
        make_plugin_manager()


def test_two_distributions_same_plugin_name(dists: list[FakeDist]) -> None:
    dists.append(FakeDist("a", "1", FakeEntryPoint("x", make_plugin(track_event=lambda event: None))))
    dists.append(FakeDist("b", "1", FakeEntryPoint("x", make_plugin(track_event=lambda event: None))))
    with pytest.raises(PluginError, match="claimed by two distributions: a and b"):
        make_plugin_manager(builtins=False)


def test_entry_point_import_failure_names_the_plugin(dists: list[FakeDist]) -> None:
    dists.append(FakeDist("broken-dist", "1", FakeEntryPoint("broken", error=ImportError("no module named foo"))))
    with pytest.raises(PluginError, match="plugin 'broken' from broken-dist failed to import"):
        make_plugin_manager(builtins=False)


def test_disable_blocks_builtins_and_entry_points(dists: list[FakeDist]) -> None:
    dists.append(FakeDist("d", "1", FakeEntryPoint("audit", error=RuntimeError("must not even import"))))
    pm = make_plugin_manager(disable=["audit", "telegram", "webhook"])
    assert pm.get_plugin("audit") is None and pm.get_plugin("telegram") is None and pm.get_plugin("webhook") is None
    assert {p["name"] for p in plugin_info(pm)}.isdisjoint({"audit", "telegram", "webhook"})


def test_missing_builtin_module_is_skipped_but_broken_one_is_not(
    dists: list[FakeDist], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pmod, "BUILTIN_PLUGINS", {"ghost": "claudemesh_gateway.plugins.no_such_plugin_xyz"})
    assert make_plugin_manager().get_plugin("ghost") is None

    (tmp_path / "cmgw_broken_builtin.py").write_text("import cmgw_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(pmod, "BUILTIN_PLUGINS", {"broken": "cmgw_broken_builtin"})
    with pytest.raises(PluginError, match="built-in plugin 'broken' failed to import"):
        make_plugin_manager()
    sys.modules.pop("cmgw_broken_builtin", None)


@pytest.mark.parametrize("hook", ["render_text", "register_gateways", "register_web_routes", "lifespan"])
def test_async_impl_of_sync_only_hook_is_rejected(dists: list[FakeDist], hook: str) -> None:
    async def impl(app: Any) -> None:
        return None

    class P:
        pass

    setattr(P, hook, hookimpl(specname=hook)(impl))
    if hook == "register_gateways":
        async def reg(register: Any) -> None:
            return None
        P.register_gateways = hookimpl(reg)
    if hook == "render_text":
        async def render(message: Any, text: str) -> None:
            return None
        P.render_text = hookimpl(render)
    with pytest.raises(PluginError, match=f"{hook}\\(\\) must be a plain def"):
        make_plugin_manager(builtins=False, plugins=[("asyncy", P())])


def test_misspelt_hookimpl_is_an_error(dists: list[FakeDist]) -> None:
    class P:
        @hookimpl
        def track_events(self, event: Event) -> None:  # typo: no such hook
            pass

    with pytest.raises(PluginError, match="track_events"):
        make_plugin_manager(builtins=False, plugins=[("typo", P())])


def test_unknown_hook_argument_is_an_error(dists: list[FakeDist]) -> None:
    class P:
        @hookimpl
        def track_event(self, event: Event, bogus: int) -> None:
            pass

    with pytest.raises(PluginError, match="plugin 'bad' is invalid"):
        make_plugin_manager(builtins=False, plugins=[("bad", P())])


async def test_notify_isolates_failing_observers(dists: list[FakeDist], caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    class Before:
        @hookimpl
        async def track_event(self, event: Event) -> None:
            seen.append("before:" + event.name)

    class Broken:
        @hookimpl
        def track_event(self, event: Event) -> None:
            raise RuntimeError("boom")

    class After:
        @hookimpl
        def track_event(self, event: Event, app: Any) -> None:
            seen.append("after:" + event.name)

    pm = make_plugin_manager(builtins=False, plugins=[("before", Before()), ("broken", Broken()), ("after", After())])
    with caplog.at_level(logging.ERROR, logger="claudemesh_gateway.plugin_manager"):
        await notify(pm.hook.track_event, event=Event(), app=None)
    assert sorted(seen) == ["after:event", "before:event"]
    assert "plugin 'broken' failed in track_event()" in caplog.text


class _GW(Gateway):
    kind = "dup"
    capabilities = Capabilities()

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, out: Any) -> SendResult:
        return SendResult()


class _GW2(_GW):
    pass


def test_gateway_kinds_and_duplicates(dists: list[FakeDist]) -> None:
    one = make_plugin(register_gateways=lambda register: register(_GW))
    pm = make_plugin_manager(builtins=False, plugins=[("one", one)])
    assert gateway_kinds(pm) == {"dup": _GW}

    two = make_plugin(register_gateways=lambda register: register(_GW2))
    pm = make_plugin_manager(builtins=False, plugins=[("one", one), ("two", two)])
    with pytest.raises(PluginError, match="gateway kind 'dup' registered twice: by plugin 'one' and by plugin 'two'"):
        gateway_kinds(pm)


def test_gateway_registration_is_validated(dists: list[FakeDist]) -> None:
    class NoKind(_GW):
        kind = ""

    class BadConfig(_GW):
        kind = "bad"
        Config = dict  # type: ignore[assignment]

    for cls, match in ((NoKind, "kind must be a non-empty string"), (BadConfig, "Config must subclass GatewayConfig"),
                       (object, "not a Gateway subclass")):
        plugin = make_plugin(register_gateways=lambda register, c=cls: register(c))
        pm = make_plugin_manager(builtins=False, plugins=[("p", plugin)])
        with pytest.raises(PluginError, match=match):
            gateway_kinds(pm)
    assert issubclass(_GW.Config, GatewayConfig)


def test_trace_switch_installs_hook_monitoring(
    dists: list[FakeDist], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLAUDEMESH_TRACE_PLUGINS", "1")
    plugin = make_plugin(register_gateways=lambda register: None)
    pm = make_plugin_manager(builtins=False, plugins=[("p", plugin)])
    with caplog.at_level(logging.DEBUG, logger="claudemesh_gateway.plugin_manager.trace"):
        pm.hook.register_gateways(register=lambda cls: None)
    assert "hook register_gateways -> ['p']" in caplog.text
