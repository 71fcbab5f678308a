"""Operator actions shared by the admin API, the CLI and signals: one place each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, PluginError

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["config_diff", "reload_config", "send_test_message"]


async def reload_config(runtime: Runtime, *, actor: str) -> dict[str, Any]:
    """Validate the config file again and apply it without dropping queued or in-flight messages
    (``runtime.reloader``, which ``create_app`` installs: the reload restarts gateways and meshes,
    which only the composition layer knows how to build)."""
    if runtime.reloader is None:
        return {"ok": False, "errors": ["config reload is not available in this gateway"]}
    return await runtime.reloader(runtime, actor=actor)


async def send_test_message(runtime: Runtime, route: str, text: str, *, actor: str) -> dict[str, Any]:
    """Queue ``text`` to every destination of ``route``. LookupError when there is no such route."""
    if runtime.pipeline is None:
        raise LookupError("the message pipeline is not running")
    return await runtime.pipeline.send_test_message(route, text, actor=actor)


# -- what a reload would change ----------------------------------------------------------------------------------------
async def config_diff(runtime: Runtime, *, started: Any = None) -> dict[str, Any]:
    """The running configuration against the config file on disk as a reload would read it, secrets
    masked (``Settings.diff``): ``{"ok", "config_path", "changes", "restart_required", "errors"}``.

    ``started``: the settings the process started with. A reload does not apply the tables only a
    restart does (``RESTART_ONLY``), so those are compared as they were at start: a change to them
    stays listed after the reload, until the restart. ``ok`` is False when the file does not load
    (``errors`` says why); the reload checks more (the route table against the gateways)."""
    old = runtime.settings
    if started is not None and started is not old:
        old = old.in_effect(started)
    path = getattr(old, "config_path", None)
    result: dict[str, Any] = {"ok": False, "config_path": None if path is None else str(path), "changes": [],
                              "restart_required": [], "errors": []}
    if path is None:
        result["errors"] = ["this gateway was not started from a config file"]
        return result
    try:
        new = old.reread()
    except ConfigError as exc:
        result["errors"] = list(exc.problems)
        return result
    changes = old.diff(new, gateway_models=_gateway_models(runtime, old, new))
    restart = sorted({c["table"] for c in changes if c["applies"] == "restart"})
    return {**result, "ok": True, "changes": changes, "restart_required": restart}


def _gateway_models(runtime: Runtime, old: Any, new: Any) -> dict[str, list[BaseModel]]:
    """Each gateway table validated by its kind's ``Config`` (the running one's, and the file's where it
    validates): the models say which keys of a raw table are secrets (their SecretStr fields)."""
    from .plugin_manager import gateway_kinds

    try:
        kinds = gateway_kinds(runtime.pm)
    except PluginError:
        kinds = {}
    out: dict[str, list[BaseModel]] = {}
    running = getattr(runtime, "gateways", None) or {}
    for settings in (old, new):
        for name in settings.gateways:
            models = out.setdefault(name, [])
            cfg = getattr(running.get(name), "config", None)
            if settings is old and isinstance(cfg, BaseModel):
                models.append(cfg)
                continue
            cls = kinds.get(settings.gateway_kind(name))
            if cls is None:
                continue
            try:
                models.append(cls.Config.model_validate(settings.gateway_table(name)))
            except ValidationError:  # the reload reports it; the key-name rule still masks what looks secret
                continue
    return out
