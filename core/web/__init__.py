"""/-/ endpoints: health, readiness, Prometheus metrics, admin API (JWT), dashboard.

``setup_web(app, runtime)`` is called by ``create_app`` before the router freezes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import appkeys
from .admin import admin_routes
from .config import AdminConfig, HealthConfig
from .health import health_handler, ready_handler
from .live import LiveHub, live_handler
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .recent import RecentEvents
from .security import setup_security
from .textsearch import TextIndex
from .throughput import Throughput

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["AdminConfig", "HealthConfig", "Metrics", "setup_web"]

STATIC = Path(__file__).parent / "static"


def _config(value: Any, model: type) -> Any:
    if value is None:
        return model()
    if isinstance(value, model):
        return value
    if isinstance(value, dict):
        return model(**value)
    return model.model_validate(value, from_attributes=True)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.config_dict[appkeys.METRICS]
    await metrics.refresh(request.config_dict[appkeys.RUNTIME])
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def dashboard_handler(request: web.Request) -> web.StreamResponse:
    if not request.config_dict[appkeys.ADMIN_CONFIG].allow_remote:
        from .auth import is_loopback

        if not is_loopback(request):
            raise web.HTTPForbidden(text="dashboard answers loopback clients only ([admin] allow_remote)")
    return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})


def setup_web(app: web.Application, runtime: Runtime) -> Metrics:
    """Mount /-/health, /-/ready, /-/metrics, /-/api/*, /-/ and register the observers; install the
    security headers and the Host check (:mod:`.security`)."""
    settings = runtime.settings
    setup_security(app, settings)
    app[appkeys.RUNTIME] = runtime
    app[appkeys.STARTED_SETTINGS] = settings
    app[appkeys.ADMIN_CONFIG] = _config(getattr(settings, "admin", None), AdminConfig)
    app[appkeys.HEALTH_CONFIG] = _config(getattr(settings, "health", None), HealthConfig)
    metrics = app[appkeys.METRICS] = Metrics()
    recent = app[appkeys.RECENT] = RecentEvents()
    throughput = app[appkeys.THROUGHPUT] = Throughput()
    live = app[appkeys.LIVE] = LiveHub()
    app.on_shutdown.append(live.close)
    observers: list[tuple[str, Any]] = [("metrics", metrics), ("recent_events", recent), ("throughput", throughput)]
    trace_cfg = getattr(settings, "trace", None)
    minutes = float(getattr(trace_cfg, "debug_text_minutes", 0) or 0)
    text_index = app[appkeys.TEXT_INDEX] = (
        TextIndex(minutes) if minutes > 0 and getattr(trace_cfg, "enabled", False) else None)
    if text_index is not None:
        observers.append(("text_search", text_index))
    for name, plugin in observers:
        if runtime.pm.get_plugin(name) is None:
            runtime.pm.register(plugin, name=name)
    existing = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    routes = [
        web.get("/-/health", health_handler),
        web.get("/-/ready", ready_handler),
        web.get("/-/metrics", metrics_handler),
        web.get("/-/", dashboard_handler),
        web.static("/-/static", STATIC),
        web.get("/-/api/live", live_handler),
        *admin_routes(),
    ]
    app.router.add_routes([r for r in routes if not (isinstance(r, web.RouteDef)
                                                      and (r.method, r.path) in existing)])
    return metrics
