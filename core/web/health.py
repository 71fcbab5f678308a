"""``/-/health`` (liveness + component states) and ``/-/ready`` (fails when down or silently stalled).

Readiness fails when:
- the store cannot write (disk full, I/O error, the database server down or refusing...): nothing new
  can be accepted (the store's ``write_problem``; then neither the ping nor the stall check runs);
- a mesh or gateway is not CONNECTED (starting, reconnecting, bad credentials, stopped);
- a mesh topic poller has not completed a poll within ``health.poll_stall_after_s``;
- the store is a database that does not answer a ping (PostgreSQL hung, down or unreachable);
- delivery is stalled: items are due in the outbox but no delivery attempt has
  completed for ``health.stall_after_s`` (lanes that wait on a rate limit or a
  Retry-After are not due, so a throttled destination is not a stall).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..events import GatewayState
from . import appkeys
from .config import HealthConfig
from .metrics import poll_status

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["component_report", "health_handler", "readiness_problems", "ready_handler"]


def component_report(runtime: Runtime) -> dict[str, Any]:
    now = time.time()
    meshes: dict[str, Any] = {}
    gateways: dict[str, Any] = {}
    for name, (state, detail, since) in sorted(runtime.states.items()):
        entry = {"state": str(state), "detail": detail, "since": since, "for_s": round(now - since, 1)}
        (meshes if name in runtime.meshes else gateways)[name] = entry
    for name in runtime.meshes:
        meshes.setdefault(name, {"state": "unknown", "detail": "", "since": None, "for_s": None})
        polls = poll_status(runtime.meshes[name], now)
        meshes[name]["topics"] = {
            t: {"last_poll_age_s": None if age == float("inf") else round(age, 1), "latency_s": round(lat, 4)}
            for t, (age, lat) in polls.items()
        }
        keys = getattr(runtime.meshes[name], "sealed_key_report", None)
        if callable(keys):  # bodyVersion 2: sealed / unencrypted / pending (key_not_sealed_for_member) / error
            meshes[name]["topic_keys"] = keys()
    for name in runtime.gateways:
        gateways.setdefault(name, {"state": "unknown", "detail": "", "since": None, "for_s": None})
    return {"meshes": meshes, "gateways": gateways}


async def readiness_problems(runtime: Runtime, cfg: HealthConfig) -> list[str]:
    problems: list[str] = []
    if runtime.draining:
        problems.append("shutting down")
    write_problem = _write_problem(runtime.store)
    if write_problem:
        problems.append(f"store cannot write: {write_problem}")
    report = component_report(runtime)
    for kind in ("meshes", "gateways"):
        for name, entry in report[kind].items():
            if entry["state"] != str(GatewayState.CONNECTED):
                why = f" ({entry['detail']})" if entry["detail"] else ""
                problems.append(f"{kind[:-2] if kind == 'meshes' else 'gateway'} {name} is {entry['state']}{why}")
    now = time.time()
    for mesh_name, peer in runtime.meshes.items():
        for topic, (age, _lat) in poll_status(peer, now).items():
            if age > cfg.poll_stall_after_s:
                shown = "never" if age == float("inf") else f"{age:.0f}s ago"
                problems.append(f"mesh {mesh_name} topic {topic}: last completed poll {shown}")
    if write_problem:  # the store knows it is down (and probes for its recovery): no ping, no stall check
        return problems
    ping = getattr(runtime.store, "ping", None)  # a database store: is it reachable?
    if callable(ping) and not await ping(timeout=min(5.0, cfg.stall_after_s)):
        # one line either way: an unreachable database starts the store's outage (write_problem)
        problems.append(f"store cannot write: {_write_problem(runtime.store)}" if _write_problem(runtime.store)
                        else "store unreachable (the database does not answer)")
        return problems
    problems.extend(await _delivery_stall(runtime, cfg, now))
    return problems


def _write_problem(store: Any) -> str | None:
    problem = getattr(store, "write_problem", None)  # optional on a Store
    return problem if isinstance(problem, str) and problem else None


async def _delivery_stall(runtime: Runtime, cfg: HealthConfig, now: float) -> list[str]:
    due = await runtime.store.ready_lanes(now)
    if not due:
        return []
    stats = getattr(runtime.delivery, "stats", None)
    stats = (stats() if callable(stats) else stats) or {}
    last = float(stats.get("last_activity") or 0.0)  # wall-clock seconds of the last completed attempt
    started = float(getattr(runtime, "started_at", 0.0) or 0.0)
    reference = max(last, started)
    if reference and now - reference > cfg.stall_after_s:
        return [(f"delivery stalled: {len(due)} destination(s) have due items and no attempt completed for "
                 f"{now - reference:.0f}s")]
    return []


async def health_handler(request: web.Request) -> web.Response:
    runtime: Runtime = request.config_dict[appkeys.RUNTIME]
    body = {"status": "alive", "uptime_s": round(time.time() - runtime.started_at, 1), **component_report(runtime)}
    leases = getattr(runtime, "leases", None)
    if leases is not None:  # which replica this is and the leases it holds (lanes, topic pollers...)
        body["replica"] = leases.describe()
    return web.json_response(body)


async def ready_handler(request: web.Request) -> web.Response:
    runtime: Runtime = request.config_dict[appkeys.RUNTIME]
    cfg: HealthConfig = request.config_dict[appkeys.HEALTH_CONFIG]
    problems = await readiness_problems(runtime, cfg)
    return web.json_response({"ready": not problems, "problems": problems}, status=200 if not problems else 503)
