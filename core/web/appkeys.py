"""aiohttp AppKeys of the /-/ endpoints (typed, warning-free app state)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import AdminConfig, HealthConfig

if TYPE_CHECKING:
    from .live import LiveHub
    from .metrics import Metrics
    from .recent import RecentEvents
    from .textsearch import TextIndex
    from .throughput import Throughput

RUNTIME: web.AppKey[Any] = web.AppKey("cmgw_web_runtime")
ADMIN_CONFIG: web.AppKey[AdminConfig] = web.AppKey("cmgw_admin_config", AdminConfig)
HEALTH_CONFIG: web.AppKey[HealthConfig] = web.AppKey("cmgw_health_config", HealthConfig)
METRICS: web.AppKey[Metrics] = web.AppKey("cmgw_metrics")
RECENT: web.AppKey[RecentEvents] = web.AppKey("cmgw_recent")
THROUGHPUT: web.AppKey[Throughput] = web.AppKey("cmgw_throughput")
LIVE: web.AppKey[LiveHub] = web.AppKey("cmgw_live")
#: the in-memory text of recent messages, or None: ``[trace] debug_text_minutes`` is 0 (the default)
TEXT_INDEX: web.AppKey[TextIndex | None] = web.AppKey("cmgw_text_index")
#: the settings the app was built with (the restart-only tables keep these values until a restart)
STARTED_SETTINGS: web.AppKey[Any] = web.AppKey("cmgw_started_settings")
