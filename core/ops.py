"""Operator actions shared by the admin API, the CLI and signals: one place each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["reload_config", "send_test_message"]


async def reload_config(runtime: Runtime, *, actor: str) -> dict[str, Any]:
    """Validate the config file again and apply it without dropping queued or in-flight messages."""
    from .app import reload_config as _reload

    return await _reload(runtime, actor=actor)


async def send_test_message(runtime: Runtime, route: str, text: str, *, actor: str) -> dict[str, Any]:
    """Queue ``text`` to every destination of ``route``. LookupError when there is no such route."""
    if runtime.pipeline is None:
        raise LookupError("the message pipeline is not running")
    return await runtime.pipeline.send_test_message(route, text, actor=actor)
