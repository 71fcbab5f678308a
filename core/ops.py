"""Operator actions shared by the admin API, the CLI and signals: one place each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["reload_config", "send_test_message"]


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
