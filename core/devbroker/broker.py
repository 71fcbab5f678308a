"""The dev broker: an aiohttp loopback emulation of the claudemesh broker (spec part B).

API (stable; the mesh peer and core tests depend on it)::

    broker = DevBroker(state_dir: Path | None, host="127.0.0.1", port=0, *, config=DevBrokerConfig())
    await broker.start()            # loads state; seeds mesh "dev" when empty; writes <state_dir>/meshes.toml
    broker.ws_url / broker.http_url / broker.port
    broker.default_mesh             # DevSeed: .mesh (MeshInfo), .gateway/.alice/.bob (MemberInfo), .general_topic_id
    broker.mesh_tables()            # {"dev": {broker_url, mesh_id, member_id, secret_key, root_key, display_name}, ...}
    broker.create_mesh(slug, *, name=None) -> MeshInfo
    broker.add_member(mesh_id, display_name, *, role="member", groups=(), keypair=None, role_tag=None,
                      message_mode=None) -> MemberInfo
    broker.revoke_member(mesh_id, member_id); broker.set_grants(mesh_id, member_id, sender_pubkey, caps)
    broker.create_topic(mesh_id, name, creator_member_id, *, visibility="public", encrypted=True) -> TopicInfo
    broker.join_topic(mesh_id, topic_id_or_name, member_id, role="member")
    broker.mint_invite(mesh_id, *, role="member", expires_in=7*86400, max_uses=1, preset=None) -> token
    broker.create_api_key(mesh_id, capabilities, *, topic_scopes=None, issued_by_member_id=None) -> secret
    broker.rest_url                 # http://host:port: /api/v1 (A.13) is served here, as the web app would
    # test knobs
    broker.drop_connections(mesh_id=None, *, pubkey=None) -> int   # abort sockets, no close frame: grace
    broker.set_status(pubkey, "working"|"dnd"|"idle") -> int
    broker.set_rate_limit(burst, per_minute)
    broker.presences(mesh_id=None) -> list[dict]; broker.mesh_count(mesh_id) -> int
    broker.queue_rows(mesh_id=None) -> list[QueueRow]; broker.topic_messages(mesh_id=None, topic_id=None)
    broker.orphan_presences(mesh_id=None, *, pubkey=None) -> int   # forget leases, keep sockets: zombies
    await broker.keepalive_tick(); broker.sweep_claims() -> int; broker.purge_old() -> int
    await broker.stop()             # closes every socket with 1001 "shutting down" and saves state

Later upstream behaviour
------------------------
Part B describes the broker at the spec's pinned commit. Later upstream brokers changed three
things after a "daemon restart blackout", and the dev broker models them by default (each can
be switched back in ``DevBrokerConfig``):

* **Role-scoped sessionId dedup** (``role_scoped_dedup``): ``hello`` replaces only
  ``control-plane`` presences with its sessionId, ``session_hello`` only ``session`` presences
  (see :mod:`.sessions`).
* **4004 presence_evicted** (``evict_split_presences``): the stale-row sweep (B.20, every 30 s)
  no longer hides a row whose lease is live (online, socket open, last pong within
  ``pong_timeout_s``): memory is the source of truth. A row it does hide while the lease is
  still online with an open socket is a split brain (``list_peers`` hides the peer, pushes still
  reach it, and nobody tells the client), so the broker evicts that presence: peer_state saved,
  entry removed, slot given back, ``peer_left`` to other members, and the socket closed with
  4004 ``presence_evicted``. When is that? A client that stopped answering pings, once its row
  is older than ``stale_presence_s`` (90 s) before the pong check (75 s, run on its own timer
  upstream) has terminated it; here the row sweep runs first in each ``keepalive_tick``, so a
  lease whose last pong is older than both limits is evicted with 4004 rather than terminated.
  A client that answers pings never sees 4004. Offline leases keep their grace.
* **4005 no_presence** (``zombie_min_age_s``): every ``keepalive_tick``, a socket that is open,
  has no presence and is at least that old (room for a hello in flight) is closed with 4005
  ``no_presence``. Such a zombie cannot receive pushes and is invisible to ``list_peers``, yet
  its client answers pings and believes it is connected. Upstream's zombies came from a close
  handler racing a reattach; here they come from a hello that created no presence (B.7) or from
  the ``orphan_presences`` knob, which reproduces that race. Verbs on a zombie still get
  ``no_hello`` (B.4) until the sweep closes it.

Clients are expected to reconnect after 4004 and 4005 (a new hello, a new presence).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Self

from aiohttp import WSMsgType, web

from ..files import make_private_dir
from . import delivery, rest, roster, sessions, topics
from .api import BrokerAPI
from .config import DevBrokerConfig
from .http import BROKER_KEY, HOOK_BUCKETS_KEY
from .http import routes as http_routes
from .info import DevSeed
from .presence import Conn, Presence, Registry
from .ratelimit import TokenBuckets
from .seed import ensure_sealed_topic, load_seed, mesh_tables, seed_dev_mesh, write_meshes_toml
from .store import Store
from .util import now_ms

log = logging.getLogger(__name__)

Handler = Callable[["DevBroker", Conn, dict[str, Any]], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    "send": delivery.handle_send,
    "client_ack": delivery.handle_client_ack,
    "message_status": delivery.handle_message_status,
    "topic_create": topics.handle_topic_create,
    "topic_list": topics.handle_topic_list,
    "topic_join": topics.handle_topic_join,
    "topic_leave": topics.handle_topic_leave,
    "topic_mark_read": topics.handle_topic_mark_read,
    "topic_members": topics.handle_topic_members,
    "topic_history": topics.handle_topic_history,
    "list_peers": roster.handle_list_peers,
    "join_group": roster.handle_join_group,
    "leave_group": roster.handle_leave_group,
    "set_summary": roster.handle_set_summary,
    "set_status": roster.handle_set_status,
    "set_stats": roster.handle_set_stats,
    "set_visible": roster.handle_set_visible,
    "set_profile": roster.handle_set_profile,
    "kick": roster.handle_kick,
    "disconnect": roster.handle_disconnect,
    "ban": roster.handle_ban,
    "apikey_create": rest.handle_apikey_create,
    "apikey_list": rest.handle_apikey_list,
    "apikey_revoke": rest.handle_apikey_revoke,
}


def _destroy(request: web.Request) -> web.StreamResponse:
    """B.1: drop the socket with no HTTP response at all."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError  # aiohttp treats this as a dropped connection: nothing is written


class DevBroker(BrokerAPI):
    def __init__(self, state_dir: Path | None, host: str = "127.0.0.1", port: int = 0, *,
                 config: DevBrokerConfig | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.host = host
        self.requested_port = port
        self.config = config or DevBrokerConfig()
        self.store = Store(self.state_dir)
        self.registry = Registry()
        self.buckets = TokenBuckets(self.config.rate_burst, self.config.rate_per_minute, self.config.rate_idle_s)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self.conns: set[Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self._save_handle: asyncio.TimerHandle | None = None
        self._seed: DevSeed | None = None
        self._stopping = False
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.store.load()
        if not self.store.meshes:
            seed_dev_mesh(self)
        self._seed = load_seed(self)
        if self._seed is not None:
            ensure_sealed_topic(self, self._seed)
        app = web.Application(middlewares=[self._upgrade_gate], client_max_size=self.config.max_message_bytes)
        app[BROKER_KEY] = self
        app[HOOK_BUCKETS_KEY] = TokenBuckets(self.config.hook_rate_per_minute, self.config.hook_rate_per_minute)
        app.add_routes([web.get("/ws", self._ws_handler), *http_routes(self)])
        rest.install(app, self)  # the web app's /api/v1 (sealed topic keys, A.13) on the same port
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._loops = [asyncio.create_task(self._every(self.config.ping_interval_s, self.keepalive_tick)),
                       asyncio.create_task(self._every(self.config.sweep_interval_s, self._sweep)),
                       asyncio.create_task(self._every(self.config.purge_interval_s, self._purge))]
        if self.state_dir is not None:
            make_private_dir(self.state_dir)
            self.save()
            if self._seed is not None:
                write_meshes_toml(self.state_dir, self._seed, self.ws_url)
        log.info("dev broker listening on %s", self.ws_url)

    async def stop(self) -> None:
        """Close every connection with 1001 ``shutting down``, stop timers, save state."""
        if self._stopping:
            return
        self._stopping = True
        for t in self._loops:
            t.cancel()
        for p in list(self.registry.entries.values()):
            p.cancel_eviction()
        closing = [c.close(1001, "shutting down") for c in list(self.conns)]
        if closing:
            await asyncio.wait([asyncio.ensure_future(c) for c in closing], timeout=self.config.close_timeout_s)
        for c in list(self.conns):
            c.terminate()
        if self._runner is not None:
            await self._runner.cleanup()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for p in list(self.registry.entries.values()):
            p.cancel_eviction()
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        self.save()
        self._stopped = True
        log.info("dev broker stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ws_url(self) -> str:
        return f"ws://{self._url_host}:{self.port or self.requested_port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host}:{self.port or self.requested_port}"

    @property
    def rest_url(self) -> str:
        """Base URL of the emulated web app REST API (``/api/v1``): the broker's own HTTP port."""
        return self.http_url

    @property
    def _url_host(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"[{host}]" if ":" in host else host

    @property
    def default_mesh(self) -> DevSeed:
        if self._seed is None:
            self._seed = load_seed(self)
        if self._seed is None:
            raise RuntimeError("this broker's state has no seeded dev mesh")
        return self._seed

    def mesh_tables(self) -> dict[str, dict[str, Any]]:
        """The ``meshes.toml`` tables (``dev``, ``dev_alice``, ``dev_bob``) as dicts, for in-memory brokers too."""
        return mesh_tables(self.default_mesh, self.ws_url)

    # -- plumbing ---------------------------------------------------------------------------

    def save(self) -> None:
        try:
            self.store.save()
        except OSError:
            log.exception("could not save dev broker state")

    def dirty(self) -> None:
        """Schedule a coalesced save of the state file."""
        if self.state_dir is None or self.loop is None or self._save_handle is not None or self._stopped:
            return

        def _flush() -> None:
            self._save_handle = None
            self.save()

        self._save_handle = self.loop.call_later(self.config.persist_debounce_s, _flush)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("dev broker task failed", exc_info=task.exception())

    def spawn_evict(self, p: Presence) -> None:
        p.evict_handle = None
        if not self._stopping:
            self.spawn(sessions.evict(self, p))

    def detach_and_close(self, p: Presence, code: int, reason: str) -> None:
        """Unlink the entry's socket (its close is then ignored) and close it in the background."""
        conn, p.conn = p.conn, None
        if conn is not None:
            conn.presence = None
            self.spawn(conn.close(code, reason))

    async def _every(self, interval: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("dev broker periodic task failed")

    # -- WebSocket --------------------------------------------------------------------------

    @web.middleware
    async def _upgrade_gate(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.raw_path != "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            log.info("upgrade to %r refused: socket destroyed", request.raw_path)
            return _destroy(request)
        return await handler(request)

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if request.raw_path != "/ws":
            return _destroy(request)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=426, text="upgrade required")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=self.config.max_frame_bytes + 1,
                                   timeout=self.config.close_timeout_s)
        await ws.prepare(request)
        conn = Conn(ws, request.transport, request.remote)  # type: ignore[arg-type]
        self.conns.add(conn)
        hello_task: asyncio.Task[Any] | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    raw: str = msg.data
                elif msg.type is WSMsgType.BINARY:
                    try:
                        raw = msg.data.decode("utf-8")
                    except UnicodeDecodeError:
                        log.debug("conn %s: binary frame is not UTF-8", conn.id)
                        continue
                elif msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)        # client pings refresh nothing
                    continue
                elif msg.type is WSMsgType.PONG:
                    if conn.presence is not None:
                        conn.presence.last_pong_at = conn.presence.last_ping_at = now_ms()
                    continue
                else:
                    if msg.type is WSMsgType.ERROR:
                        log.info("conn %s closed on error: %s", conn.id, msg.data)
                    break
                frame = self._parse(conn, raw)
                if frame is None:
                    continue
                kind = frame.get("type")
                if kind in ("hello", "session_hello"):
                    if conn.presence is not None or (hello_task is not None and not hello_task.done()):
                        log.info("conn %s: repeated %s ignored", conn.id, kind)
                        continue
                    fn = sessions.handle_hello if kind == "hello" else sessions.handle_session_hello
                    hello_task = self.spawn(self._guard(fn, conn, frame))
                    continue
                if conn.presence is None:
                    await conn.send({"type": "error", "code": "no_hello", "message": "must send hello first"})
                    continue
                handler = HANDLERS.get(kind)  # type: ignore[arg-type]
                if handler is None:
                    log.debug("conn %s: unknown type %r ignored", conn.id, kind)
                    continue
                await self._guard(handler, conn, frame)
        finally:
            if hello_task is not None and not hello_task.done():
                await asyncio.wait([hello_task], timeout=self.config.close_timeout_s)
            self.conns.discard(conn)
            sessions.socket_closed(self, conn)
        return ws

    @staticmethod
    def _parse(conn: Conn, raw: str) -> dict[str, Any] | None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.debug("conn %s: malformed JSON ignored", conn.id)
            return None
        return frame if isinstance(frame, dict) else None

    async def _guard(self, fn: Handler, conn: Conn, frame: dict[str, Any]) -> None:
        try:
            await fn(self, conn, frame)
        except delivery.SilentFailure as exc:
            log.info("conn %s: %s failed silently: %s", conn.id, frame.get("type"), exc)
        except Exception:
            log.exception("conn %s: handler for %r failed (no reply)", conn.id, frame.get("type"))

    # -- periodic work ----------------------------------------------------------------------

    async def keepalive_tick(self) -> None:
        """B.20: terminate online sockets whose last pong is too old, ping the rest; hide stale rows.

        Later upstream (see the module docstring): the stale-row sweep runs first, skips live leases
        and evicts online ones it hides (4004); sockets without a presence are closed (4005)."""
        now = now_ms()
        timeout_ms = self.config.pong_timeout_s * 1000
        if self.config.evict_split_presences:
            await self._sweep_stale_rows(now, reconcile=True)
        self.close_zombies(now)
        for p in list(self.registry.entries.values()):
            conn = p.conn
            if p.lease != "online" or conn is None or not conn.open:
                continue
            if now - p.last_pong_at > timeout_ms:
                log.info("presence %s (%s): no pong for %d ms, terminating", p.presence_id, p.display_name,
                         now - p.last_pong_at)
                conn.terminate()
                continue
            try:
                await conn.ws.ping()
            except (ConnectionError, RuntimeError):
                pass
        if not self.config.evict_split_presences:
            await self._sweep_stale_rows(now, reconcile=False)

    async def _sweep_stale_rows(self, now: int, *, reconcile: bool) -> None:
        stale_ms = self.config.stale_presence_s * 1000
        timeout_ms = self.config.pong_timeout_s * 1000
        split: list[Presence] = []
        for p in list(self.registry.entries.values()):
            if p.db_disconnected or now - p.last_ping_at <= stale_ms:
                continue
            online = p.lease == "online" and p.conn is not None and p.conn.open
            if reconcile and online and now - p.last_pong_at <= timeout_ms:
                continue  # a live lease: the row is only a projection of it
            p.db_disconnected = True
            if reconcile and online:
                split.append(p)
        for p in split:
            await sessions.evict_online(self, p, 4004, "presence_evicted")

    def close_zombies(self, now: int | None = None) -> int:
        """Close open sockets that have no presence and are ``zombie_min_age_s`` old with 4005 no_presence."""
        min_age = self.config.zombie_min_age_s
        if min_age is None:
            return 0
        now = now_ms() if now is None else now
        n = 0
        for conn in list(self.conns):
            if conn.presence is None and conn.open and not conn.closing and now - conn.opened_at >= min_age * 1000:
                log.info("conn %s: open for %d ms without a presence: close 4005 no_presence", conn.id,
                         now - conn.opened_at)
                self.spawn(conn.close(4005, "no_presence"))
                n += 1
        return n

    def sweep_claims(self) -> int:
        return delivery.sweep_claims(self)

    def purge_old(self) -> int:
        return delivery.purge_old(self)

    def _sweep(self) -> None:
        delivery.sweep_claims(self)
        self.buckets.prune()

    def _purge(self) -> None:
        delivery.purge_old(self)
