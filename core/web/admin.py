"""Admin API under ``/-/api/``: bearer JWT on every endpoint, loopback-only by default.

Every state-changing call is written to the audit log with the token's subject.
Errors answer JSON ``{"error": ...}`` and never include a token, key or body.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..webhooks import read_json_object
from . import appkeys
from .auth import verify_request
from .health import component_report, readiness_problems
from .replicas import replicas_view

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # admin requests carry a list of ids or one test message

__all__ = ["MAX_IDS", "admin_routes", "overview", "require_admin"]

#: dead-letter ids one call may name (``{"ids": [...]}``); more is a 400, not one huge SQL statement
MAX_IDS = 1000
#: store ids are SQLite rowids: 64-bit signed, and never below 1
_ID_MAX = 2**63 - 1


def _json_error(exc_cls: type[web.HTTPException], reason: str) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": reason}``, encoded by json.dumps whatever ``reason`` holds."""
    return exc_cls(text=json.dumps({"error": reason}), content_type="application/json")


def require_admin(request: web.Request) -> dict[str, Any]:
    return verify_request(request, request.config_dict[appkeys.ADMIN_CONFIG])


def _runtime(request: web.Request) -> Runtime:
    return request.config_dict[appkeys.RUNTIME]


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object body ({} without one); 400 for invalid or absurdly nested JSON, 413 above 256 KiB."""
    if not request.can_read_body:
        return {}
    return await read_json_object(request, max_bytes=MAX_BODY_BYTES)


def _ids(body: dict[str, Any]) -> list[int] | None:
    """``ids``: absent (every dead letter) or a list of at most :data:`MAX_IDS` dead-letter ids, each an
    integer from 1 to 2**63-1 (what the store can hold); anything else is a 400 naming the rule."""
    ids = body.get("ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise _json_error(web.HTTPBadRequest, "ids must be a list of integers")
    if len(ids) > MAX_IDS:
        raise _json_error(web.HTTPBadRequest, f"ids: at most {MAX_IDS} per call (omit ids for all)")
    if not all(1 <= i <= _ID_MAX for i in ids):
        raise _json_error(web.HTTPBadRequest, "ids must be dead-letter ids from 1 to 2**63-1")
    return ids


def _dead_letter_view(dl: Any) -> dict[str, Any]:
    item = dl.item
    return {
        "id": dl.id, "route": item.route, "to": item.lane, "message": item.message.get("id"),
        "sender": item.message.get("sender"), "attempts": item.attempts, "reason": dl.reason,
        "failed_at": dl.failed_at,
    }


async def overview(runtime: Runtime, request: web.Request) -> dict[str, Any]:
    now = time.time()
    depths = await runtime.store.outbox_depths()
    recent = request.config_dict[appkeys.RECENT]
    return {
        **component_report(runtime),
        "ready_problems": await readiness_problems(runtime, request.config_dict[appkeys.HEALTH_CONFIG]),
        "routes": _routes(runtime),
        "queue": [{"lane": lane, "depth": n, "oldest_age_s": round(now - oldest, 1) if oldest else 0}
                  for lane, (n, oldest) in sorted(depths.items())],
        "dead_letters": [_dead_letter_view(d) for d in await runtime.store.dlq_list(50)],
        "dead_letter_count": await runtime.store.dlq_count(),
        "recent": recent.latest(50),
        "throughput": request.config_dict[appkeys.THROUGHPUT].snapshot(),
        "trace": bool(getattr(getattr(runtime, "trace", None), "enabled", False)),
        "text_search": request.config_dict.get(appkeys.TEXT_INDEX) is not None,
        "replicas": await replicas_view(runtime),
    }


def _routes(runtime: Runtime) -> list[dict[str, Any]]:
    routes = runtime.routes.describe()
    states = {name: str(s[0]) for name, s in runtime.states.items()}
    for r in routes:
        names = {b.get("gateway") for b in r.get("binds", r.get("destinations", [])) if isinstance(b, dict)}
        if r.get("mesh"):
            names.add(r["mesh"])
        r["states"] = {n: states.get(n, "unknown") for n in sorted(n for n in names if n and n != "mesh")}
    return routes


async def get_overview(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response(await overview(_runtime(request), request))


async def get_routes(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response({"routes": _routes(_runtime(request))})


async def get_gateways(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response(component_report(_runtime(request)))


async def get_queue(request: web.Request) -> web.Response:
    require_admin(request)
    now = time.time()
    depths = await _runtime(request).store.outbox_depths()
    return web.json_response({"queue": [
        {"lane": lane, "depth": n, "oldest_age_s": round(now - oldest, 1) if oldest else 0}
        for lane, (n, oldest) in sorted(depths.items())
    ]})


async def get_dlq(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 1000))
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "limit must be an integer") from None
    store = _runtime(request).store
    return web.json_response({"count": await store.dlq_count(),
                              "dead_letters": [_dead_letter_view(d) for d in await store.dlq_list(limit)]})


async def post_dlq(request: web.Request) -> web.Response:
    claims = require_admin(request)
    action = request.match_info["action"]
    runtime = _runtime(request)
    ids = _ids(await _json_body(request))
    trace = getattr(runtime, "trace", None)
    trace = trace if trace is not None and trace.enabled else None
    if trace is not None and action in ("retry", "drop"):  # which messages: for their traces
        wanted = None if ids is None else set(ids)
        trace.dlq(action, [d for d in await runtime.store.dlq_list(10_000) if wanted is None or d.id in wanted],
                  claims.get("sub", "?"))
    if action == "retry":
        n = await runtime.store.dlq_retry(ids)
        kick = getattr(runtime.delivery, "kick", None)
        if callable(kick):
            kick()
    elif action == "drop":
        n = await runtime.store.dlq_drop(ids)
    else:
        raise _json_error(web.HTTPNotFound, "unknown dead-letter action")
    await runtime.store.audit(claims.get("sub", "?"), f"dlq.{action}", {"ids": ids, "count": n})
    log.info("admin %s: dlq %s of %s -> %d item(s)", claims.get("sub", "?"), action, ids or "all", n)
    return web.json_response({"action": action, "count": n})


async def post_test_message(request: web.Request) -> web.Response:
    claims = require_admin(request)
    runtime = _runtime(request)
    body = await _json_body(request)
    text = body.get("text", "claudemesh-gateway test message")
    if not isinstance(text, str) or not text.strip():
        raise _json_error(web.HTTPBadRequest, "text must be a non-empty string")
    from ..ops import send_test_message  # the one place that knows how to inject a synthetic message

    try:
        result = await send_test_message(runtime, request.match_info["route"], text, actor=claims.get("sub", "?"))
    except LookupError as exc:
        raise _json_error(web.HTTPNotFound, str(exc)) from None
    await runtime.store.audit(claims.get("sub", "?"), "route.test", {"route": request.match_info["route"],
                                                                     **result})
    return web.json_response(result)


async def post_reload(request: web.Request) -> web.Response:
    claims = require_admin(request)
    from ..ops import reload_config

    result = await reload_config(_runtime(request), actor=claims.get("sub", "?"))
    return web.json_response(result, status=200 if result.get("ok") else 422)


async def get_config_diff(request: web.Request) -> web.Response:
    """The running configuration against the file on disk, secrets masked (what a reload would change)."""
    require_admin(request)
    from ..ops import config_diff

    return web.json_response(await config_diff(_runtime(request),
                                               started=request.config_dict.get(appkeys.STARTED_SETTINGS)))


async def get_replicas(request: web.Request) -> web.Response:
    """This replica, the leases it holds and the other replicas holding leases (PostgreSQL)."""
    require_admin(request)
    return web.json_response(await replicas_view(_runtime(request)))


async def get_audit(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response({"audit": await _runtime(request).store.audit_list(200)})


def _bad(text: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": text}), content_type="application/json")


def _time_param(request: web.Request, name: str) -> float | None:
    """Epoch seconds, or a negative number of seconds before now (``since=-3600``: the last hour)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise _bad(f"{name} must be epoch seconds (or negative: seconds before now)") from None
    if not math.isfinite(v):
        raise _bad(f"{name} must be a finite number")
    return time.time() + v if v < 0 else v


TRACE_STATUSES = ("received", "queued", "retrying", "delivered", "dead_letter", "dropped")


TEXT_SEARCH_OFF = "q matches ids only: text search is off ([trace] debug_text_minutes = 0)"


async def get_messages(request: web.Request) -> web.Response:
    """Search the message trace by id (mesh/native/outbox), route, chat, sender, status, time range.
    By text only while ``[trace] debug_text_minutes`` keeps recent texts in memory
    (:mod:`.textsearch`): the trace itself holds no message bodies. ``text_search`` says which."""
    require_admin(request)
    store = _runtime(request).store
    qs = request.query
    try:
        limit = max(1, min(int(qs.get("limit", "50")), 500))
    except ValueError:
        raise _bad("limit must be an integer") from None
    status = qs.get("status") or None
    if status is not None and status not in TRACE_STATUSES:
        raise _bad(f"status must be one of {', '.join(TRACE_STATUSES)}")
    args: dict[str, Any] = {k: (qs.get(k) or "").strip()[:500] or None for k in ("q", "route", "chat", "sender")}
    text_index = request.config_dict.get(appkeys.TEXT_INDEX)
    if args["q"] and text_index is not None:
        also = text_index.search(args["q"], limit=limit)
        if also:  # the messages whose text matches, besides those the id names
            args["also"] = also
    found = await store.trace_search(**args, status=status, since=_time_param(request, "since"),
                                     until=_time_param(request, "until"), limit=limit)
    body: dict[str, Any] = {"messages": found, "text_search": text_index is not None}
    if text_index is None and args["q"]:
        body["note"] = TEXT_SEARCH_OFF
    return web.json_response(body)


async def get_message_trace(request: web.Request) -> web.Response:
    """The journey of one message: ``{"summary", "events"}``; the id may also be a native or outbox id
    (then ``also`` lists other messages the id names)."""
    require_admin(request)
    store = _runtime(request).store
    key = request.match_info["id"][:500]
    trace = await store.trace_get(key)
    also: list[str] = []
    if trace is None:
        ids = await store.trace_resolve(key)
        if ids:
            trace, also = await store.trace_get(ids[0]), ids[1:]
    if trace is None:
        raise web.HTTPNotFound(text='{"error":"no trace of that id (within the trace retention)"}',
                               content_type="application/json")
    return web.json_response({**trace, "also": also})


def admin_routes() -> list[web.RouteDef]:
    return [
        web.get("/-/api/overview", get_overview),
        web.get("/-/api/routes", get_routes),
        web.get("/-/api/gateways", get_gateways),
        web.get("/-/api/queue", get_queue),
        web.get("/-/api/dlq", get_dlq),
        web.post("/-/api/dlq/{action}", post_dlq),
        web.post("/-/api/routes/{route}/test", post_test_message),
        web.post("/-/api/reload", post_reload),
        web.get("/-/api/config/diff", get_config_diff),
        web.get("/-/api/replicas", get_replicas),
        web.get("/-/api/audit", get_audit),
        web.get("/-/api/messages", get_messages),
        web.get("/-/api/messages/{id}/trace", get_message_trace),
    ]
