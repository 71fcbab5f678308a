"""Builds the pluggy plugin manager and calls hooks the way the hookspecs promise.

Third-party plugins are distributions with an entry point in the ``claudemesh_gateway``
group; in-tree plugins load from :data:`BUILTIN_PLUGINS` (a name-to-module dict, so stale
entry-point metadata in a checkout cannot hide them). Entry points load *first*, built-ins
second, so a third party taking a built-in's name is a loud :class:`PluginError` instead of
pluggy's silent skip. Never name this module ``plugins.py``: it would shadow
``claudemesh_gateway.plugins``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginError

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = [
    "BUILTIN_PLUGINS",
    "SYNC_ONLY_HOOKS",
    "GatewayPluginManager",
    "await_me_maybe",
    "call_hook",
    "gateway_kinds",
    "make_plugin_manager",
    "notify",
    "plugin_info",
]

log = logging.getLogger(__name__)

BUILTIN_PLUGINS: dict[str, str] = {  # short name -> module; names are what operators write in [plugins] disable
    "webhook": "claudemesh_gateway.plugins.webhook",
    "telegram": "claudemesh_gateway.plugins.telegram",
    "slack": "claudemesh_gateway.plugins.slack",
    "whatsapp": "claudemesh_gateway.plugins.whatsapp",
    "bridge": "claudemesh_gateway.plugins.bridge",
}
SYNC_ONLY_HOOKS = ("register_gateways", "register_web_routes", "lifespan", "render_text")
TRACE_ENV = "CLAUDEMESH_TRACE_PLUGINS"


class GatewayPluginManager(pluggy.PluginManager):
    """A PluginManager that remembers where each plugin came from (for ``plugins`` / ``/-/plugins.json``)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, dict[str, Any]] = {}  # plugin name -> {"builtin", "distribution", "version"}


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (a hookimpl may be ``async def`` or return a coroutine)."""
    if inspect.isawaitable(value):
        return await value
    return value


def _dist_name(dist: importlib.metadata.Distribution) -> str:
    try:
        return dist.metadata["Name"] or "?"
    except Exception:  # noqa: BLE001 - broken metadata must not stop loading the others
        return "?"


def _load_entry_points(pm: GatewayPluginManager) -> None:
    seen: dict[str, str] = {}
    for dist in list(importlib.metadata.distributions()):
        dist_name = _dist_name(dist)
        for ep in dist.entry_points:
            if ep.group != hookspecs.PROJECT:
                continue
            if ep.name in seen and seen[ep.name] != dist_name:
                raise PluginError(
                    f"plugin name {ep.name!r} is claimed by two distributions: {seen[ep.name]} and {dist_name}"
                )
            seen[ep.name] = dist_name
            if pm.is_blocked(ep.name):
                log.info("plugin %s (%s) disabled by [plugins] disable", ep.name, dist_name)
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from {dist_name} failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            _register(pm, plugin, ep.name)
            pm.origins[ep.name] = {"builtin": False, "distribution": dist_name, "version": dist.version}
            log.debug("loaded plugin %s from %s %s", ep.name, dist_name, dist.version)


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
    except ValueError as exc:
        other = pm.get_plugin(name)
        if other is not None and other is not plugin:
            raise PluginError(f"plugin name {name!r} is already taken (built-in plugins reserve their names)") from exc
        raise PluginError(f"plugin {name!r} is registered twice: {exc}") from exc


def _import_builtin(name: str, module: str) -> object | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # only a missing in-tree module itself is skipped; a missing dependency *inside* it is an error
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            log.debug("built-in plugin %s (%s) is not present; skipped", name, module)
            return None
        raise PluginError(f"built-in plugin {name!r} failed to import: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"built-in plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from exc


def _enforce_sync(pm: pluggy.PluginManager) -> None:
    for hook_name in SYNC_ONLY_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            fn = impl.function
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                raise PluginError(f"plugin {impl.plugin_name!r}: {hook_name}() must be a plain def, not async")


def _enable_tracing(pm: pluggy.PluginManager) -> None:
    trace = logging.getLogger(__name__ + ".trace")

    def before(hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
        trace.debug("hook %s -> %s", hook_name, [i.plugin_name for i in impls])

    def after(outcome: Any, hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
        exc = outcome.exception
        trace.debug("hook %s done%s", hook_name, f" (raised {type(exc).__name__})" if exc else "")

    pm.add_hookcall_monitoring(before, after)


def make_plugin_manager(
    *,
    entry_points: bool = True,
    builtins: bool = True,
    disable: Iterable[str] = (),
    plugins: Iterable[tuple[str, object]] = (),
) -> GatewayPluginManager:
    """Load plugins: entry points, then built-ins, then ``plugins`` (name, object) given here.

    ``disable`` names are blocked (built-in or third-party). Raises :class:`PluginError`
    for a name clash, an import failure, a misspelt hookimpl or an async sync-only hook.
    """
    pm = GatewayPluginManager()
    for name in disable:
        pm.set_blocked(name)
    if entry_points:
        _load_entry_points(pm)
    if builtins:
        for name, module in BUILTIN_PLUGINS.items():
            if pm.is_blocked(name):
                log.info("built-in plugin %s disabled by [plugins] disable", name)
                continue
            mod = _import_builtin(name, module)
            if mod is None:
                continue
            _register(pm, mod, name)
            pm.origins[name] = {"builtin": True, "distribution": "claudemesh-gateway", "version": _own_version()}
    for name, obj in plugins:
        if pm.is_blocked(name):
            continue
        _register(pm, obj, name)
        pm.origins.setdefault(name, {"builtin": False, "distribution": None, "version": None})
    try:
        pm.check_pending()  # a misspelt hookimpl is an error now, not silence later
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from exc
    _enforce_sync(pm)
    if os.environ.get(TRACE_ENV, "") not in ("", "0"):
        _enable_tracing(pm)
    return pm


def _own_version() -> str:
    from . import __version__

    return __version__


async def call_hook(hook: pluggy.HookCaller, **kwargs: Any) -> list[Any]:
    """Collect-all hooks: call every impl, await awaitables, drop the Nones."""
    results = [await await_me_maybe(r) for r in hook(**kwargs)]
    return [r for r in results if r is not None]


async def notify(hook: pluggy.HookCaller, **kwargs: Any) -> None:
    """Observer hooks: every impl is called on its own; a failing plugin is logged and never
    hides the others."""
    for impl in reversed(hook.get_hookimpls()):  # pluggy's own call order (last registered first)
        if impl.wrapper or impl.hookwrapper:
            continue
        try:
            result = impl.function(*[kwargs[a] for a in impl.argnames])
            if inspect.isawaitable(result):  # (a sync observer costs no coroutine: events are per message)
                await result
        except Exception:
            log.exception("plugin %r failed in %s()", impl.plugin_name, hook.name)


def gateway_kinds(pm: pluggy.PluginManager) -> dict[str, type[Gateway]]:
    """``kind -> Gateway class`` from every plugin's ``register_gateways``. Duplicates are loud."""
    from .gateway import Gateway, GatewayConfig

    kinds: dict[str, type[Gateway]] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.register_gateways.get_hookimpls():  # registration order
        plugin_name = impl.plugin_name

        def register(cls: type[Gateway], _plugin: str = plugin_name) -> None:
            if not (inspect.isclass(cls) and issubclass(cls, Gateway)):
                raise PluginError(f"plugin {_plugin!r}: register_gateways() got {cls!r}, not a Gateway subclass")
            kind = getattr(cls, "kind", None)
            if not isinstance(kind, str) or not kind:
                raise PluginError(f"plugin {_plugin!r}: {cls.__name__}.kind must be a non-empty string")
            if not (inspect.isclass(cls.Config) and issubclass(cls.Config, GatewayConfig)):
                raise PluginError(f"plugin {_plugin!r}: {cls.__name__}.Config must subclass GatewayConfig")
            if inspect.isabstract(cls):
                missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
                raise PluginError(f"plugin {_plugin!r}: {cls.__name__} does not implement {missing}")
            if kind in kinds and kinds[kind] is not cls:
                raise PluginError(
                    f"gateway kind {kind!r} registered twice: by plugin {owners[kind]!r} and by plugin {_plugin!r}"
                )
            kinds[kind], owners[kind] = cls, _plugin

        fn: Callable[..., Any] = impl.function
        try:
            fn(*({"register": register}[a] for a in impl.argnames))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {plugin_name!r} failed in register_gateways(): {exc}") from exc
    return kinds


def plugin_info(pm: GatewayPluginManager | pluggy.PluginManager) -> list[dict[str, Any]]:
    """Name, version, distribution and implemented hooks of each plugin, sorted by name."""
    origins = getattr(pm, "origins", {})
    hooks_by_plugin: dict[str, list[str]] = {}
    for hook_name in sorted(n for n in dir(pm.hook) if not n.startswith("_")):
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            hooks_by_plugin.setdefault(impl.plugin_name, []).append(hook_name)
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        origin = origins.get(name, {})
        out.append({
            "name": name,
            "version": origin.get("version"),
            "distribution": origin.get("distribution"),
            "builtin": bool(origin.get("builtin", False)),
            "hooks": sorted(hooks_by_plugin.get(name, [])),
        })
    return sorted(out, key=lambda p: p["name"])

