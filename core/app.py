"""``create_app(settings, pm)``: the aiohttp application factory.

Everything is built here, before the router freezes: gateway instances and their
webhook sub-apps (``/gateways/<name>/``), plugin routes (``/-/plugins/<plugin>/``),
the ``/-/`` endpoints. Everything with a start and a stop is a cleanup context,
added in this order and torn down in reverse::

    shared ClientSession + background tasks
    store (open / close)
    embedded dev broker (only when the CLI started one)
    mesh peers (connect the meshes routes use, watch the topics they read / stop)
    gateways (start in config order / stop in reverse, whatever a reload left running)
    delivery engine (start / stop, draining up to min(delivery.drain_timeout, server.shutdown_timeout))
    plugin lifespan contexts

A context whose startup failed is never torn down; the ones before it are (the gateways
context stops the gateways it already started). Startup failures surface as
:class:`StartupError` (exit code 4 from the CLI). ``app[RUNTIME]`` is the live state;
``app[SETTINGS]`` is the configuration the app was *built* with (``runtime.settings`` follows
reloads).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pluggy
from aiohttp import web
from pydantic import ValidationError

from . import __version__
from .errors import ConfigError, PluginError, StartupError, StoreUnavailable, WebhookAuthError
from .events import GatewayState
from .files import make_private_dir
from .gateway import Gateway, GatewayConfig
from .logconfig import register_patterns, register_secrets
from .meshes import (
    mesh_topics,
    start_mesh,
    stop_mesh,
    stop_meshes,
    stop_quietly,
    used_meshes,
    watch,
    watch_topics,
)
from .plugin_manager import gateway_kinds, plugin_info
from .runtime import Runtime
from .settings import RESTART_ONLY, Settings, iter_secrets, validation_problems
from .signals import add_signal_handler, remove_signal_handler
from .webhooks import JsonTooDeep, parse_json, read_body

__all__ = [
    "PLUGIN_MANAGER",
    "RUNTIME",
    "SETTINGS",
    "create_app",
    "describe_routes",
    "error_middleware",
    "install_reload_signal",
    "online_problems",
    "open_store",
    "reload_config",
    "route_problems",
    "runtime_of",
    "store_check",
    "store_where",
    "validate_gateways",
]

log = logging.getLogger(__name__)

# -- every AppKey of the core, in one place (the /-/ endpoints keep theirs in web/appkeys.py) ------------------
RUNTIME: web.AppKey[Runtime] = web.AppKey("claudemesh_runtime", Runtime)
SETTINGS: web.AppKey[Settings] = web.AppKey("claudemesh_settings", Settings)
PLUGIN_MANAGER: web.AppKey[pluggy.PluginManager] = web.AppKey("claudemesh_pm", pluggy.PluginManager)

GATEWAY_PREFIX = "/gateways"
PLUGIN_PREFIX = "/-/plugins"


def runtime_of(app_or_request: web.Application | web.Request) -> Runtime:
    """The Runtime of an app, a sub-app or a request."""
    if isinstance(app_or_request, web.Request):
        return app_or_request.config_dict[RUNTIME]
    return app_or_request[RUNTIME]


# -- gateway tables ---------------------------------------------------------------------------------------------
def validate_gateways(
    settings: Settings, kinds: Mapping[str, type[Gateway]]
) -> dict[str, tuple[type[Gateway], GatewayConfig]]:
    """Validate each ``[gateways.<name>]`` table with its kind's ``Config``; one line per problem."""
    out: dict[str, tuple[type[Gateway], GatewayConfig]] = {}
    problems: list[str] = []
    for name in settings.gateways:
        kind = settings.gateway_kind(name)
        cls = kinds.get(kind)
        if cls is None:
            known = ", ".join(sorted(kinds)) or "none"
            where = f"gateways.{name}.type" if "type" in settings.gateways[name] else f"gateways.{name}"
            problems.append(f"{where}: unknown gateway kind {kind!r} (installed kinds: {known})")
            continue
        try:
            cfg = cls.Config.model_validate(settings.gateway_table(name))
        except ValidationError as exc:
            problems.extend(validation_problems(exc, prefix=f"gateways.{name}"))
            continue
        out[name] = (cls, cfg)
    if problems:
        raise ConfigError(problems)
    return out


# -- middleware ------------------------------------------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """JSON errors that never leak internals; 503 for webhooks while draining (the vendor retries) and
    for any request the store could not write (a traceback per refused request would flood the log)."""
    runtime = request.config_dict.get(RUNTIME)
    if runtime is not None and runtime.draining and request.path.startswith(GATEWAY_PREFIX + "/"):
        return web.json_response({"error": "draining, retry later"}, status=503, headers={"Retry-After": "5"})
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except WebhookAuthError:
        log.warning("rejected %s %s: bad signature", request.method, request.path)
        return web.json_response({"error": "forbidden"}, status=403)
    except StoreUnavailable:  # disk full or the like: the store logs it (rate-limited), /-/ready reports it
        return web.json_response({"error": "the store cannot write, retry later"}, status=503,
                                 headers={"Retry-After": "5"})
    except asyncio.CancelledError:
        raise
    except (ConnectionResetError, aiohttp.ClientPayloadError) as exc:  # the client went away mid-request
        log.info("%s %s: client went away before the request was complete (%s)", request.method, request.path,
                 type(exc).__name__)
        return web.json_response({"error": "request incomplete"}, status=400)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response({"error": "internal server error"}, status=500)


# -- minimal /-/ endpoints (the web package adds ready/metrics/admin/dashboard) -------------------------------------
async def _health(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    states = {
        name: {"state": str(state), "detail": detail, "since": since}
        for name, (state, detail, since) in sorted(runtime.states.items())
    }
    status = "draining" if runtime.draining else "ok"
    return web.json_response({"status": status, "version": __version__, "uptime_s": round(runtime.uptime, 1),
                              "components": states})


async def _plugins_json(request: web.Request) -> web.Response:
    return web.json_response(plugin_info(runtime_of(request).pm))


# -- development sink (only with the embedded dev broker) ---------------------------------------------------------
DEV_SINK_PATH = "/-/dev/sink"
DEV_SINK_KEEP = 200
DEV_SINK_MAX_BYTES = 1024 * 1024


class DevSink:
    """``POST /-/dev/sink``: a local webhook target so the example config shows traffic with no
    accounts. Keeps the last 200 requests in memory (``GET /-/dev/sink``) and checks each one's
    webhook signature against the configured webhook gateways. Mounted only when
    ``[dev_broker] embedded = true``; never a production endpoint."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.received: list[dict[str, Any]] = []
        self._n = 0

    def _signed(self, request: web.Request, body: bytes) -> bool:
        """Whether a configured gateway that signs what it posts (the webhook gateway's ``signed(headers,
        body)``) signed this request: the core asks the gateways, it imports no plugin."""
        checks = [gw.signed for gw in self.runtime.gateways.values() if callable(getattr(gw, "signed", None))]
        return any(check(request.headers, body) for check in checks)

    @staticmethod
    def _loopback_only(request: web.Request) -> None:
        if request.remote not in ("127.0.0.1", "::1"):
            raise web.HTTPForbidden(text='{"error":"the dev sink answers loopback clients only"}',
                                    content_type="application/json")

    async def post(self, request: web.Request) -> web.Response:
        self._loopback_only(request)
        body = await read_body(request, max_bytes=DEV_SINK_MAX_BYTES)  # 413 above
        try:
            payload: Any = parse_json(body) if body else None
        except JsonTooDeep:
            raise  # 400: not worth keeping (and it would trip whoever reads GET /-/dev/sink)
        except web.HTTPBadRequest:
            payload = body.decode("utf-8", "replace")  # not JSON: kept as text
        self._n += 1
        entry = {"n": self._n, "received_at": time.time(), "signed": self._signed(request, body), "body": payload}
        self.received.append(entry)
        del self.received[:-DEV_SINK_KEEP]
        msg_id = payload.get("id") if isinstance(payload, dict) else None
        log.info("dev sink: received #%d (message %s, signature %s)", self._n, msg_id,
                 {True: "ok", False: "BAD", None: "unchecked"}[entry["signed"]])
        return web.json_response({"id": f"sink-{self._n}"})

    async def get(self, request: web.Request) -> web.Response:
        self._loopback_only(request)
        return web.json_response(self.received)


def _add_missing_routes(app: web.Application, routes: list[web.RouteDef]) -> None:
    existing = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    app.router.add_routes([r for r in routes if (r.method, r.path) not in existing])


def _setup_ops_endpoints(app: web.Application, runtime: Runtime) -> None:
    try:
        web_pkg = importlib.import_module("claudemesh_gateway.web")
    except ModuleNotFoundError as exc:
        if exc.name and "claudemesh_gateway.web".startswith(exc.name):
            web_pkg = None
        else:
            raise
    setup_web = getattr(web_pkg, "setup_web", None) if web_pkg is not None else None
    if setup_web is not None:
        setup_web(app, runtime)
    _add_missing_routes(app, [web.get("/-/health", _health), web.get("/-/plugins.json", _plugins_json)])
    if runtime.settings.dev_broker.embedded:
        sink = DevSink(runtime)
        _add_missing_routes(app, [web.post(DEV_SINK_PATH, sink.post), web.get(DEV_SINK_PATH, sink.get)])


# -- adapters to the parts other modules own --------------------------------------------------------------------------
def open_store(settings: Settings, *, prune: bool = True) -> Any:
    """The configured store (not yet opened): SQLite at ``server.store_path`` with ``[retention]``
    (the message trace's window included), or PostgreSQL when ``[store] backend = "postgres"``.
    ``prune=False`` (tools such as ``dlq``): no background pruning; the running gateway does that."""
    cfg = settings.store
    trace_ttl = settings.retention.trace_days * 86400.0  # [trace] retention_days is its alias
    if cfg.backend == "postgres":
        from .store.postgres import PostgresStore

        r = settings.retention  # its hourly purge honours the [retention] windows (no row cap yet)
        return PostgresStore(cfg.dsn_value(), max_pool=cfg.pool_size, connect_timeout=cfg.connect_timeout,
                             trace_ttl=trace_ttl, inbox_ttl=r.inbox_days * 86400.0,
                             map_ttl=r.reply_window_days * 86400.0, audit_ttl=r.audit_days * 86400.0,
                             dead_letter_ttl=r.dead_letter_days * 86400.0)
    from .store.sqlite import SqliteStore

    path = settings.server.store
    make_private_dir(path.parent)  # 0700: the store holds the session secret keys
    retention = settings.retention if prune else settings.retention.model_copy(update={"interval_s": 0})
    return SqliteStore(path, retention=retention)


def store_where(settings: Settings) -> str:
    """Where the store lives, safe to show (never the DSN): a file path or PostgreSQL host:port/db."""
    if settings.store.backend == "postgres":
        from .store.postgres import describe_dsn

        return f"PostgreSQL {describe_dsn(settings.store.dsn_value())}"
    return str(settings.server.store)


async def store_check(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, notes) about the configured store for ``check``: with PostgreSQL, connect with the
    DSN and compare the schema version with this gateway's. SQLite is opened only by ``run``."""
    if settings.store.backend != "postgres":
        return [], []
    from .store.postgres import SCHEMA_VERSION, probe_schema

    try:
        found = await probe_schema(settings.store.dsn_value(), timeout=settings.store.connect_timeout)
    except StartupError as exc:
        return [f"store.dsn: {exc}"], []
    where = store_where(settings)
    if found > SCHEMA_VERSION:
        return [(f"store: the schema at {where} is version {found}, newer than this gateway understands "
                f"({SCHEMA_VERSION}); upgrade claudemesh-gateway")], []
    if found < SCHEMA_VERSION:
        return [], [f"store: {where} reached; schema version {found}, `run` migrates it to {SCHEMA_VERSION}"]
    return [], [f"store: {where} reached; schema version {found} (current)"]


def route_problems(
    settings: Settings, gateways: Mapping[str, Any], *, skip_meshes: bool = False
) -> list[str]:
    """Offline cross-checks of ``[[routes]]`` (unknown gateways and meshes, bad binding options,
    routes that can carry nothing), one line each. ``skip_meshes``: accept any mesh name (before
    the embedded dev broker has written its mesh tables)."""
    from .routing.config import MESH_GATEWAY, parse_mesh_chat
    from .routing.table import RouteTable

    meshes: dict[str, Any] = dict(settings.mesh)
    if skip_meshes:
        for route in settings.routes:
            if route.mesh:
                meshes.setdefault(route.mesh, None)
            for b in route.binds:
                if b.gateway == MESH_GATEWAY:
                    meshes.setdefault(parse_mesh_chat(b.chat).mesh, None)
    try:
        RouteTable.build(settings.routes, gateways=gateways, meshes=meshes)
    except ConfigError as exc:
        return exc.problems
    return []


def describe_routes(settings: Settings, gateways: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The resolved route table as operators read it (``claudemesh-gateway routes``)."""
    from .routing.table import RouteTable

    return RouteTable.from_settings(settings, gateways).describe()


async def online_problems(
    settings: Settings, pm: pluggy.PluginManager, http: aiohttp.ClientSession, *, timeout: float = 10.0,
    encryption: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Connect to each mesh and resolve the routed topics; run each gateway's ``check()``.
    Returns (problems, warnings). ``encryption``, when given, receives one line per bound topic:
    the mode a post gets now (``auto`` resolved against the broker) and who can read it."""
    from .mesh.keys import KeyRing
    from .mesh.peer import MeshPeer
    from .mesh.state import MemoryKV
    from .routing.table import RouteTable

    problems: list[str] = []
    warnings: list[str] = []
    runtime = Runtime(settings, pm)  # a throwaway one: gateways see their bindings and the shared session
    runtime.http = http
    for name, (cls, cfg) in validate_gateways(settings, gateway_kinds(pm)).items():
        runtime.gateways[name] = cls(name, cfg, runtime.context_for(name))
    runtime.routes = RouteTable.from_settings(settings, runtime.gateways)
    wanted = bound_topics(settings)
    # the routes' explicit encryption applies, as when the gateway runs
    keyring = KeyRing.from_configs(runtime.routes.apply_encryption(settings.mesh)) if settings.mesh else None
    for name, cfg in settings.mesh.items():
        peer = MeshPeer(name, cfg, kv=MemoryKV(), keyring=keyring, identity="cli")
        await peer.start()
        try:
            try:
                await peer.wait_connected(timeout)
            except Exception as exc:  # noqa: BLE001  (a boundary: reported, not raised)
                problems.append(f"mesh.{name}: could not connect: {getattr(peer, 'last_error', None) or exc}")
                continue
            topics = {t.name for t in await peer.topics()}
            for topic in sorted(wanted.get(name, ())):
                if topic not in topics:
                    problems.append(f"mesh.{name}: topic {topic!r} used by a route does not exist on the mesh")
                elif encryption is not None:
                    mode, bv, detail = await peer.effective_encryption(topic)
                    encryption.append(describe_encryption(name, topic, mode, bv, detail))
        finally:
            await peer.stop()
    for name, gw in runtime.gateways.items():
        try:
            warnings.extend(f"gateways.{name}: {w}" for w in await gw.check())
        except Exception as exc:  # noqa: BLE001  (a boundary: reported, not raised)
            problems.append(f"gateways.{name}: check failed: {type(exc).__name__}: {exc}")
    return problems, warnings


def bound_topics(settings: Settings) -> dict[str, set[str]]:
    """``{mesh: {topic}}`` of every topic a route reads or a ``gateway = "mesh"`` binding posts to."""
    from .routing.config import MESH_GATEWAY, parse_mesh_chat

    wanted: dict[str, set[str]] = {}
    for route in settings.routes:
        if route.mesh and route.topic:
            wanted.setdefault(route.mesh, set()).add(route.topic)
        for b in route.binds:
            mc = parse_mesh_chat(b.chat) if b.gateway == MESH_GATEWAY else None
            if mc is not None and mc.kind == "topic":
                wanted.setdefault(mc.mesh, set()).add(mc.value)
    return wanted


def describe_encryption(mesh: str, topic: str, mode: str, body_version: int | None, detail: str) -> str:
    """One ``check`` line: the topic's configured mode, the bodyVersion posts get, who can read them."""
    from .mesh.keys import reader_note

    names = {1: "bodyVersion 1 (plaintext)", 2: "bodyVersion 2 (sealed topic key)", 3: "bodyVersion 3 (HKDF key)"}
    if body_version is None:
        return f"mesh {mesh} #{topic}: {mode} -> cannot post yet: {detail}"
    why = f" [{detail}]" if detail and mode == "auto" else ""
    return f"mesh {mesh} #{topic}: {mode} -> {names[body_version]}{why}: {reader_note(body_version)}"


def configured_encryption(settings: Settings) -> list[str]:
    """``check`` without ``--online``: the configured mode of every bound topic (``auto`` needs the broker)."""
    from .mesh.keys import BODY_HKDF, BODY_PLAINTEXT

    lines = []
    for mesh, topics in sorted(bound_topics(settings).items()):
        for topic in sorted(topics):
            mode = _configured_mode(settings, mesh, topic)
            if mode == "auto":
                lines.append(f"mesh {mesh} #{topic}: auto -> bodyVersion 2 if the topic has a sealed key and REST "
                             "is configured, else bodyVersion 1 (check --online shows which)")
            else:
                bv = BODY_HKDF if mode == "hkdf" else BODY_PLAINTEXT
                lines.append(describe_encryption(mesh, topic, mode, bv, ""))
    return lines


def _configured_mode(settings: Settings, mesh: str, topic: str) -> str:
    """A route's explicit ``encryption`` for the topic, else the mesh config's (as RouteTable.encryption_for)."""
    for route in settings.routes:
        if route.mesh == mesh and route.topic == topic and "encryption" in route.model_fields_set:
            return route.encryption
    cfg = settings.mesh.get(mesh)
    return cfg.topic_settings(topic).encryption if cfg is not None else "auto"


def _build_routing(runtime: Runtime) -> None:
    """Route table + pipeline (claudemesh_gateway.routing). The table raises ConfigError."""
    from .routing.pipeline import Pipeline
    from .routing.table import RouteTable

    runtime.routes = RouteTable.from_settings(runtime.settings, runtime.gateways)
    runtime.pipeline = Pipeline(runtime)


def _build_keyring_for(settings: Settings) -> Any:
    from .mesh.keys import KeyRing

    return KeyRing.from_settings(settings)


def _build_keyring(runtime: Runtime) -> Any:
    return _build_keyring_for(runtime.settings)


def _build_leases(runtime: Runtime, store: Any) -> Any:
    from .store.leases import Leases, default_replica_id

    cfg = runtime.settings.store
    return Leases(store, replica=cfg.replica_id or default_replica_id(), ttl=cfg.lease_ttl)


def _shared(runtime: Runtime) -> bool:
    """Several replicas may share this store (leases decide who does what)."""
    return runtime.leases is not None and runtime.leases.shared


def _build_delivery(runtime: Runtime) -> Any:
    from .delivery import DeliveryEngine

    return DeliveryEngine(runtime.store, runtime.pipeline, config=runtime.settings.delivery,
                          emit=runtime.emit, lanes=runtime.leases.lanes() if _shared(runtime) else None,
                          trace=runtime.trace)


def _drain_timeout(settings: Settings) -> float:
    return min(float(getattr(settings.delivery, "drain_timeout", 10.0)), settings.server.shutdown_timeout)


# -- cleanup contexts ----------------------------------------------------------------------------------------------------
def _http_ctx(runtime: Runtime) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=60, connect=15)
        runtime.http = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": f"claudemesh-gateway/{__version__}"})
        runtime.start_events()
        yield
        grace = min(5.0, runtime.settings.server.shutdown_timeout)
        await runtime.stop_events(grace)
        await runtime.supervisor.aclose(grace=grace)
        await runtime.http.close()
        runtime.http = None

    return ctx


def _store_ctx(runtime: Runtime, store: Any | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        s = store if store is not None else open_store(runtime.settings)
        try:
            await s.open()
        except Exception as exc:
            raise StartupError(f"store could not be opened ({store_where(runtime.settings)}): {exc}") from exc
        runtime.store = s
        runtime.leases = _build_leases(runtime, s)
        runtime.leases.start()
        from .otel import build_otel
        from .trace import TraceRecorder

        trace_cfg = runtime.settings.trace
        try:
            otel = build_otel(runtime.settings.otel)  # None unless [otel] enabled
        except BaseException:
            await runtime.leases.close()
            await s.close()
            raise
        runtime.trace = TraceRecorder(s, enabled=trace_cfg.enabled, flush_interval=trace_cfg.flush_interval,
                                      otel=otel)
        runtime.trace.start()
        yield
        await runtime.trace.stop()  # after delivery stopped (cleanup runs in reverse): its last events too
        await runtime.leases.close()  # a clean stop hands every lease over at once
        await s.close()

    return ctx


def _dev_broker_ctx(runtime: Runtime, broker: Any) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # the CLI started it before loading the includes it writes; we only own its shutdown
        runtime.dev_broker = broker
        yield
        await stop_quietly(broker.stop(), "embedded dev broker", timeout=runtime.settings.server.shutdown_timeout)

    return ctx


def _meshes_ctx(runtime: Runtime) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        used = used_meshes(runtime.settings)
        for name in runtime.settings.mesh:
            if name not in used:
                log.info("mesh %s is not used by any route; not connecting (CLI identity only)", name)
        runtime.keyring = _build_keyring(runtime)
        try:
            for name in used:
                await start_mesh(runtime, name)
        except Exception as exc:
            await stop_meshes(runtime)
            raise StartupError(f"mesh could not start: {exc}") from exc
        yield
        await stop_meshes(runtime)

    return ctx


async def _start_gateway(runtime: Runtime, gw: Gateway) -> None:
    name = gw.name
    runtime.set_state(name, GatewayState.STARTING)
    try:
        await gw.start()
    except Exception as exc:
        runtime.set_state(name, GatewayState.STOPPED, "failed to start")
        raise StartupError(f"gateway {name} could not start: {type(exc).__name__}: {exc}") from exc
    if runtime.states.get(name, (None,))[0] == GatewayState.STARTING and gw.state == GatewayState.STOPPED:
        # a gateway without a connection of its own (webhook-only) never reports: started is up
        runtime.set_state(name, GatewayState.CONNECTED)
    log.info("gateway %s started", name, extra={"gateway": name})


async def _stop_gateway(runtime: Runtime, gw: Gateway) -> None:
    await stop_quietly(gw.stop(), f"gateway {gw.name}", timeout=runtime.settings.server.shutdown_timeout)
    runtime.set_state(gw.name, GatewayState.STOPPED)
    log.info("gateway %s stopped", gw.name, extra={"gateway": gw.name})


def _gateways_ctx(runtime: Runtime) -> Callable[[web.Application], AsyncIterator[None]]:
    """Start every gateway in config order; stop the running ones (after reloads too) in reverse."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        started: list[Gateway] = []
        try:
            for gw in list(runtime.gateways.values()):
                await _start_gateway(runtime, gw)
                started.append(gw)
        except BaseException:
            for gw in reversed(started):
                await _stop_gateway(runtime, gw)
            raise
        yield
        for gw in reversed(list(runtime.gateways.values())):
            await _stop_gateway(runtime, gw)

    return ctx


def _delivery_ctx(runtime: Runtime) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        engine = _build_delivery(runtime)
        runtime.delivery = engine
        await engine.start()
        yield
        await engine.stop(_drain_timeout(runtime.settings))

    return ctx


def _route_signature(routes: list[Any]) -> list[tuple[str, str]]:
    return [(getattr(r, "method", "*"), getattr(r, "path", repr(r))) for r in routes]


def _trampoline(runtime: Runtime, name: str, index: int) -> Callable[[web.Request], Any]:
    """Calls route ``index`` of gateway ``name`` *as it is now*: a reload that restarts the gateway
    swaps the handlers without touching the frozen router."""

    async def handler(request: web.Request) -> web.StreamResponse:
        routes = runtime.web_routes.get(name)
        if not routes or name not in runtime.gateways:
            raise web.HTTPNotFound()
        return await routes[index].handler(request)

    return handler


def _mount_gateway_routes(app: web.Application, runtime: Runtime, name: str, routes: list[Any]) -> None:
    runtime.web_routes[name] = routes
    if not routes:
        return
    defs = []
    for i, r in enumerate(routes):
        if not isinstance(r, web.RouteDef):
            raise PluginError(f"gateway {name}: web_routes() may only return web.RouteDef (web.get/post/...)")
        defs.append(web.RouteDef(r.method, r.path, _trampoline(runtime, name, i), dict(r.kwargs)))
    sub = web.Application()
    sub.add_routes(defs)
    app.add_subapp(f"{GATEWAY_PREFIX}/{name}/", sub)


async def _mark_draining(app: web.Application) -> None:
    runtime = app[RUNTIME]
    runtime.draining = True
    log.info("shutting down: draining")


# -- hot reload ------------------------------------------------------------------------------------------------------------
async def reload_config(runtime: Runtime, *, actor: str = "operator") -> dict[str, Any]:
    """Re-read the config file and apply it without dropping anything (SIGHUP, ``POST /-/api/reload``).

    Everything is validated first (settings, gateway tables, the route table); on any problem the
    running config stays and ``{"ok": False, "errors": [...]}`` is returned. Otherwise routes are
    swapped atomically, gateways whose table changed are restarted, new ones started, removed ones
    stopped, meshes connected/disconnected/restarted as routes need them, new topics watched.
    Tables that only apply at startup (``RESTART_ONLY``: ``server``, ``dev_broker``, ``plugins``,
    ``log``, ``admin``, ``health``, ``delivery``, ``retention``, ``store``, ``trace``, ``otel``) are
    reported in ``restart_required``. The outbox is durable and its
    workers keep running: queued and in-flight messages are never dropped.
    """
    from .routing.table import RouteTable
    from .settings import load_settings

    async with runtime.reload_lock:
        old = runtime.settings
        if old.config_path is None:
            return {"ok": False, "errors": ["this gateway was not started from a config file"]}
        try:
            new = load_settings(old.config_path)
            configs = validate_gateways(new, gateway_kinds(runtime.pm))
            fresh: dict[str, Gateway] = {}
            problems: list[str] = []
            for name, (cls, cfg) in configs.items():
                current = runtime.gateways.get(name)
                if current is not None and type(current) is cls and current.config == cfg:
                    continue
                gw = cls(name, cfg, runtime.context_for(name))
                routes = list(gw.web_routes())
                before = _route_signature(runtime.web_routes.get(name, [])) if current is not None else []
                if _route_signature(routes) != before:
                    problems.append(f"gateways.{name}: its webhook routes are new or changed; restart to apply")
                fresh[name] = gw
            if problems:
                raise ConfigError(problems)
            instances = {name: fresh.get(name, runtime.gateways.get(name)) for name in configs}
            table = RouteTable.from_settings(new, instances)
        except ConfigError as exc:
            log.error("reload refused (%s): %s", actor, "; ".join(exc.problems))
            await _audit(runtime, actor, {"ok": False, "errors": exc.problems})
            return {"ok": False, "errors": exc.problems}
        except PluginError as exc:
            log.error("reload refused (%s): %s", actor, exc.human_message)
            await _audit(runtime, actor, {"ok": False, "errors": [exc.human_message]})
            return {"ok": False, "errors": [exc.human_message]}

        register_secrets(iter_secrets(new))
        for cls, cfg in configs.values():
            register_secrets(iter_secrets(cfg))
            register_patterns(cls.log_redactions)
        removed = [n for n in runtime.gateways if n not in configs]
        restarted = [n for n in fresh if n in runtime.gateways]
        added = [n for n in fresh if n not in runtime.gateways]
        errors: list[str] = []

        for name in removed + restarted:  # stop first: one bot token must never poll twice
            await _stop_gateway(runtime, runtime.gateways[name])
            runtime.mesh_subscribers.remove_gateway(name)  # a restarted gateway subscribes again in start()
        for name in removed:
            del runtime.gateways[name]
            runtime.web_routes.pop(name, None)
            runtime.states.pop(name, None)
        runtime.settings = new
        runtime.routes = table  # routes and bindings swap atomically
        for name, gw in fresh.items():
            runtime.gateways[name] = gw
            runtime.web_routes[name] = list(gw.web_routes())
            try:
                await _start_gateway(runtime, gw)
            except StartupError as exc:
                errors.append(exc.human_message)
        runtime.gateways = {name: runtime.gateways[name] for name in configs}  # config order

        mesh_changes = await _reload_meshes(runtime, old, new, errors)
        restart_required = [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]
        result = {
            "ok": not errors, "errors": errors, "gateways": {"added": added, "removed": removed,
                                                             "restarted": restarted},
            "meshes": mesh_changes, "routes": len(new.routes), "restart_required": restart_required,
        }
        log.info("config reloaded by %s: gateways +%s -%s ~%s, meshes %s%s", actor, added, removed, restarted,
                 mesh_changes, f"; restart required for [{', '.join(restart_required)}]" if restart_required else "")
        await _audit(runtime, actor, result)
        return result


def _gateway_meshes(runtime: Runtime) -> set[str]:
    """Meshes gateways use through ``ctx.mesh()`` (the bridge): those they consume topics of, and
    those their ``mesh_of(binding address)`` names (a send-only bridge subscribes to nothing)."""
    meshes = set(runtime.mesh_subscribers.meshes())
    routes = runtime.routes
    for name, gw in runtime.gateways.items():
        for b in routes.bindings_for(name) if routes is not None else ():
            try:
                mesh = gw.mesh_of(b.address)
            except Exception:  # a plugin's bug must not break the reload (logged with its traceback)
                log.exception("gateway %s: mesh_of(%s) failed", name, b.address)
                continue
            if mesh:
                meshes.add(mesh)
    return meshes


def _resubscribe(runtime: Runtime, name: str) -> None:
    """A (re)started peer of mesh ``name``: gateways reading it get the dispatcher and their topics."""
    topics = runtime.mesh_subscribers.topics(name)
    if not topics:
        return
    peer = runtime.meshes[name]
    runtime.mesh_subscribers.install(runtime, peer)
    tasks = runtime.watchers.setdefault(name, {})
    for topic in sorted(topics):
        if topic not in tasks:  # not already watched for a route by start_mesh
            tasks[topic] = runtime.supervisor.spawn(watch(peer, name, topic), what=f"watch:{name}:#{topic}:resubscribe")


async def _reload_meshes(runtime: Runtime, old: Settings, new: Settings, errors: list[str]) -> dict[str, list[str]]:
    """Connect what new routes use, disconnect what only old routes used, reconnect changed tables.
    Meshes gateways use through ``ctx.mesh()`` (subscribed to, or named by a gateway's ``mesh_of``)
    stay; a reconnected one gets the subscribers' dispatcher and topics again. Runs after the
    gateways were (re)started and the route table swapped, so it sees their current subscriptions."""
    used = set(used_meshes(new))
    kept = _gateway_meshes(runtime)
    stopped = [n for n in list(runtime.meshes)
               if n not in new.mesh or old.mesh.get(n) != new.mesh.get(n)
               or (n not in used and n not in kept)]
    for name in stopped:
        await stop_mesh(runtime, name)
    started = []
    for name in [n for n in new.mesh if n in used or (n in kept and n in stopped)]:
        if name not in runtime.meshes:
            try:
                await start_mesh(runtime, name)
                started.append(name)
            except Exception as exc:  # noqa: BLE001  (a boundary: reported, not raised)
                errors.append(f"mesh {name} could not start: {exc}")
                continue
            _resubscribe(runtime, name)
        else:
            watch_topics(runtime, name)  # topics new routes read
            wanted = set(mesh_topics(runtime, name)) | runtime.mesh_subscribers.topics(name)
            for topic in [t for t in runtime.watchers.get(name, {}) if t not in wanted]:
                runtime.watchers[name].pop(topic).cancel()
                await runtime.meshes[name].unwatch_topic(topic)
    return {"started": [n for n in started if n not in stopped], "stopped": [n for n in stopped if n not in started],
            "restarted": [n for n in stopped if n in started]}


async def _audit(runtime: Runtime, actor: str, detail: dict[str, Any]) -> None:
    if runtime.store is None:
        return
    try:
        await runtime.store.audit(actor, "config.reload", detail)
    except Exception:
        log.exception("could not audit the reload")


def install_reload_signal(app: web.Application) -> None:
    """SIGHUP reloads the config (``run`` installs this; tests and embedders need not)."""

    async def on_startup(app: web.Application) -> None:
        runtime = app[RUNTIME]
        loop = asyncio.get_running_loop()

        def hup() -> None:
            try:
                runtime.supervisor.spawn(reload_config(runtime, actor="sighup"), what="reload")
            except RuntimeError:
                log.info("SIGHUP during shutdown ignored")

        if not add_signal_handler(loop, "SIGHUP", hup):
            log.debug("SIGHUP reload not available here (platform or thread)")

    async def on_cleanup(app: web.Application) -> None:
        remove_signal_handler(asyncio.get_running_loop(), "SIGHUP")

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)


# -- the factory -----------------------------------------------------------------------------------------------------------
def create_app(
    settings: Settings,
    pm: pluggy.PluginManager,
    *,
    dev_broker: Any | None = None,
    store: Any | None = None,
) -> web.Application:
    """Build the application. Raises ConfigError (bad gateway tables or routes) or PluginError.

    ``dev_broker``: an already started DevBroker the app stops on shutdown (CLI ``run``).
    ``store``: a Store instance instead of the SQLite file at ``server.store`` (tests).
    """
    runtime = Runtime(settings, pm)
    runtime.reloader = reload_config
    app = web.Application(middlewares=[error_middleware])
    runtime.app = app
    app[RUNTIME] = runtime
    app[SETTINGS] = settings
    app[PLUGIN_MANAGER] = pm

    kinds = gateway_kinds(pm)
    configs = validate_gateways(settings, kinds)
    for cls, cfg in configs.values():  # validated models now know which fields are SecretStr
        register_secrets(iter_secrets(cfg))
        register_patterns(cls.log_redactions)

    for name, (cls, cfg) in configs.items():
        try:
            gw = cls(name, cfg, runtime.context_for(name))
        except Exception as exc:
            raise PluginError(f"gateway {name} ({cls.kind}) could not be created: {type(exc).__name__}: {exc}") from exc
        runtime.gateways[name] = gw
    _build_routing(runtime)  # ConfigError listing every route problem

    # HTTP surface, all of it before the router freezes
    for name, gw in runtime.gateways.items():
        _mount_gateway_routes(app, runtime, name, list(gw.web_routes()))
    for impl in reversed(pm.hook.register_web_routes.get_hookimpls()):
        try:
            extra = impl.function(*({"app": app}[a] for a in impl.argnames))
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in register_web_routes(): {exc}") from exc
        if extra:
            sub = web.Application()
            sub.add_routes(list(extra))
            app.add_subapp(f"{PLUGIN_PREFIX}/{impl.plugin_name}/", sub)
    _setup_ops_endpoints(app, runtime)

    app.on_shutdown.append(_mark_draining)
    app.cleanup_ctx.append(_http_ctx(runtime))
    app.cleanup_ctx.append(_store_ctx(runtime, store))
    if dev_broker is not None:
        app.cleanup_ctx.append(_dev_broker_ctx(runtime, dev_broker))
    app.cleanup_ctx.append(_meshes_ctx(runtime))
    app.cleanup_ctx.append(_gateways_ctx(runtime))
    app.cleanup_ctx.append(_delivery_ctx(runtime))
    for impl in reversed(pm.hook.lifespan.get_hookimpls()):
        try:
            fn = impl.function(*({"app": app}[a] for a in impl.argnames))
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in lifespan(): {exc}") from exc
        if fn is not None:
            app.cleanup_ctx.append(fn)
    return app
