"""The running gateway in one object, and the :class:`GatewayContext` each gateway receives.

``create_app`` builds one :class:`Runtime` per application (no module globals, so
tests build as many as they like) and stores it under ``app[RUNTIME]``. Parts
that start later (the HTTP session, store, mesh peers, delivery engine) are
filled in by the app's cleanup contexts; until then they are ``None``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .events import Event, GatewayState, GatewayStateChanged
from .logconfig import register_secret
from .meshhandle import CoreMeshHandle, MeshSubscribers
from .messages import Address
from .plugin_manager import notify
from .tasks import TaskSupervisor

if TYPE_CHECKING:
    import aiohttp
    import pluggy
    from aiohttp import web

    from .gateway import Binding, Gateway, SubmitResult
    from .messages import Message
    from .settings import Settings

__all__ = ["GatewayContextImpl", "Runtime"]

log = logging.getLogger(__name__)


class Runtime:
    """Everything the running gateway holds. Attribute names are a contract with
    routing, delivery and the /-/ endpoints; keep them."""

    def __init__(self, settings: Settings, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.store: Any = None  # claudemesh_gateway.store.base.Store, opened by the app
        self.http: aiohttp.ClientSession | None = None
        self.meshes: dict[str, Any] = {}  # name -> MeshPeer
        self.keyring: Any = None  # claudemesh_gateway.mesh.keys.KeyRing
        self.gateways: dict[str, Gateway] = {}
        self.routes: Any = None  # claudemesh_gateway.routing RouteTable
        self.pipeline: Any = None  # claudemesh_gateway.routing Pipeline
        self.delivery: Any = None  # claudemesh_gateway.delivery DeliveryEngine
        self.leases: Any = None  # claudemesh_gateway.store.leases.Leases (this replica's)
        self.trace: Any = None  # claudemesh_gateway.trace.TraceRecorder, started with the store
        self.dev_broker: Any = None  # an embedded DevBroker started by the CLI, if any
        self.watchers: dict[str, dict[str, Any]] = {}  # mesh -> topic -> the task that starts its poller
        self.web_routes: dict[str, list[Any]] = {}  # gateway -> its current web.RouteDefs (swapped on reload)
        self.app: web.Application | None = None
        self.states: dict[str, tuple[GatewayState, str, float]] = {}
        self.started_at: float = time.time()
        self.draining: bool = False
        self.supervisor = TaskSupervisor("gateway")
        self.mesh_subscribers = MeshSubscribers()  # (mesh, topic) consumed by gateways through ctx.mesh()
        #: ``reloader(runtime, actor=...)``: re-read and apply the config (``create_app`` installs app.reload_config)
        self.reloader: Callable[..., Awaitable[dict[str, Any]]] | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._event_queue: asyncio.Queue[Event] | None = None
        self._event_worker: asyncio.Task[Any] | None = None
        self.events_dropped = 0

    @property
    def reload_lock(self) -> asyncio.Lock:
        """Serialises config reloads (created on first use, inside the running loop)."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        return self._reload_lock

    # -- events ------------------------------------------------------------------------------------------
    EVENT_QUEUE_MAX = 10_000

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every ``track_event`` observer, in the background and in emission order.
        Never raises and never blocks: while the app runs, events go through one bounded queue (an
        observer that falls 10,000 events behind loses events, with a warning); before the app
        started, each event gets its own background task."""
        try:
            queue = self._event_queue
            if queue is not None:
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self.events_dropped += 1
                    if self.events_dropped in (1, 100) or self.events_dropped % 10_000 == 0:
                        log.warning("track_event observers are behind; %d event(s) dropped so far",
                                    self.events_dropped)
                return
            if self.supervisor.closing:
                log.debug("event %s after shutdown; not delivered to observers", event.name)
                return
            self.supervisor.spawn(notify(self.pm.hook.track_event, event=event, app=self.app),
                                  what=f"track_event:{event.name}")
        except RuntimeError:  # no running loop, or the supervisor is closing
            log.debug("event %s not delivered to observers (no running loop)", event.name)
        except Exception:
            log.exception("could not dispatch event %s", event.name)

    def start_events(self) -> None:
        """Start the ordered event dispatcher (the app does, once its loop runs)."""
        if self._event_queue is None:
            self._event_queue = asyncio.Queue(self.EVENT_QUEUE_MAX)
            self._event_worker = self.supervisor.spawn(self._dispatch_events(self._event_queue), what="events")

    async def stop_events(self, grace: float) -> None:
        """Deliver what is queued (up to ``grace`` seconds), then stop the dispatcher."""
        queue, worker = self._event_queue, self._event_worker
        self._event_queue, self._event_worker = None, None
        if queue is None or worker is None:
            return
        try:
            await asyncio.wait_for(queue.join(), grace)
        except TimeoutError:
            log.warning("%d event(s) not delivered to observers at shutdown", queue.qsize())
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    async def _dispatch_events(self, queue: asyncio.Queue[Event]) -> None:
        while True:
            event = await queue.get()
            try:
                await notify(self.pm.hook.track_event, event=event, app=self.app)
            finally:
                queue.task_done()

    def set_state(self, name: str, state: GatewayState, detail: str = "") -> None:
        """Record a mesh/gateway state (health, readiness, dashboard) and emit GatewayStateChanged."""
        previous = self.states.get(name)
        if previous is not None and previous[0] == state and previous[1] == detail:
            return
        self.states[name] = (state, detail, time.time())
        level = logging.WARNING if state in (GatewayState.BAD_CREDENTIALS, GatewayState.TRANSIENT_DISCONNECT) \
            else logging.INFO
        extra = {"mesh": name} if name in self.meshes else {"gateway": name}
        log.log(level, "%s is %s%s", name, state.value, f": {detail}" if detail else "", extra=extra)
        self.emit(GatewayStateChanged(gateway=name, state=state, detail=detail))

    def context_for(self, name: str) -> GatewayContextImpl:
        return GatewayContextImpl(self, name)

    @property
    def uptime(self) -> float:
        return time.time() - self.started_at


class GatewayContextImpl:
    """The core's side of the :class:`~claudemesh_gateway.gateway.GatewayContext` protocol."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self._ns = f"gw:{name}"

    @property
    def http(self) -> aiohttp.ClientSession:
        if self.runtime.http is None:
            raise RuntimeError("the shared HTTP session exists only while the app runs")
        return self.runtime.http

    @property
    def public_url(self) -> str | None:
        """``[server] public_url`` (validated, no trailing slash), or None."""
        return self.runtime.settings.server.public_url

    @property
    def bindings(self) -> Sequence[Binding]:
        routes = self.runtime.routes
        if routes is None:
            return ()
        return tuple(routes.bindings_for(self.name))

    async def submit(self, message: Message) -> SubmitResult:
        pipeline = self.runtime.pipeline
        if pipeline is None:
            raise RuntimeError("the message pipeline is not running")
        return await pipeline.submit(message)

    def _store(self) -> Any:
        if self.runtime.store is None:
            raise RuntimeError("the store is not open")
        return self.runtime.store

    async def kv_get(self, key: str) -> Any | None:
        return await self._store().kv_get(self._ns, key)

    async def kv_set(self, key: str, value: Any) -> None:
        await self._store().kv_set(self._ns, key, value)

    async def exclusive(self, what: str) -> bool:
        leases = self.runtime.leases
        return True if leases is None else await leases.hold(f"gateway:{self.name}:{what}")

    async def kv_delete(self, key: str) -> None:
        await self._store().kv_delete(self._ns, key)

    async def lookup_origin(self, native_id: str, chat: str) -> str | None:
        lane = Address(self.name, chat).key
        store = self._store()
        # map_reverse matches a lane *prefix*: "tg/-100123" would also match "tg/-1001234", so an
        # exact-lane hit is confirmed with map_get; otherwise look in the chat's threads ("<lane>/...").
        found = await store.map_reverse(lane, native_id)
        if found is not None and native_id in await store.map_get(found, lane):
            return found
        return await store.map_reverse(lane + "/", native_id)

    def emit(self, event: Event) -> None:
        self.runtime.emit(event)

    def set_state(self, state: GatewayState, detail: str = "") -> None:
        self.runtime.set_state(self.name, state, detail)

    def register_secret(self, value: str) -> None:
        register_secret(value)

    def mesh(self, name: str) -> CoreMeshHandle:
        return CoreMeshHandle(self.runtime, name, self.name)
