"""Hook specifications. pluggy project name == entry-point group == ``claudemesh_gateway``.

Rules: registration hooks and firstresult hooks are SYNC ONLY (enforced at load);
collect-all pipeline hooks may return awaitables, which the core awaits; observer
hooks (``track_event``) are called per plugin, so one failing plugin never hides
another. Spec changes only ever add arguments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from .events import Event
    from .gateway import Gateway
    from .messages import Address, Message

PROJECT = "claudemesh_gateway"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# --- registration: sync, called once while the app is built ------------------


@hookspec
def register_gateways(register: Callable[[type[Gateway]], None]) -> None:
    """SYNC ONLY. Call ``register(GatewayClass)`` for each gateway type this plugin ships.
    Two classes with the same ``kind`` are a PluginError."""


@hookspec
def register_web_routes(app: web.Application) -> Iterable[web.RouteDef] | None:
    """SYNC ONLY. Extra HTTP routes, mounted under ``/-/plugins/<plugin name>/``. Collect-all."""


@hookspec
def lifespan(app: web.Application) -> Callable[[web.Application], Any] | None:
    """SYNC ONLY. Return an async-generator function ``ctx(app)`` (setup; yield; teardown)
    appended to the app's cleanup contexts, after the gateways. Collect-all."""


# --- message pipeline: may return awaitables ----------------------------------


@hookspec
def allow_message(message: Message, app: web.Application) -> bool | None | Awaitable[bool | None]:
    """Return False to drop ``message`` before routing. Any False wins; None = no opinion."""


@hookspec
def message_destinations(
    message: Message, app: web.Application
) -> Iterable[Address] | None | Awaitable[Iterable[Address] | None]:
    """Extra destinations for ``message`` beyond the configured routes. Union, de-duplicated."""


@hookspec(firstresult=True)
def render_text(message: Message, text: str, gateway: Gateway, app: web.Application) -> str | None:
    """SYNC ONLY. Render attributed ``text`` for ``gateway``. First non-None wins; the
    gateway's own ``render_text`` and then plain text are the fallbacks."""


# --- observers: isolated per plugin --------------------------------------------


@hookspec
def track_event(event: Event, app: web.Application) -> None | Awaitable[None]:
    """Observe an event (metrics, audit, alerts). Return values are ignored; a raising
    plugin is logged and never hides the others."""
