"""The running gateway's mesh peers: start one (key ring, store, pipeline, state callback), watch
the topics routes read, stop them. ``create_app``'s mesh context, the config reload and
``ctx.mesh()`` (:mod:`.meshhandle`, for a mesh no route uses) all start peers here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .delivery.addresses import MESH_GATEWAY, parse_mesh_chat
from .errors import MeshError, MeshTerminalError
from .events import GatewayState
from .mesh.state import KV_NAMESPACE

if TYPE_CHECKING:
    from .runtime import Runtime
    from .settings import Settings

__all__ = [
    "ReplicaKV",
    "mesh_state_callback",
    "mesh_topics",
    "start_mesh",
    "stop_mesh",
    "stop_meshes",
    "stop_quietly",
    "used_meshes",
    "watch",
    "watch_topics",
]

log = logging.getLogger(__name__)
WATCH_RETRY_FIRST_S = 5.0  # a topic that cannot be watched (missing, a timeout) is tried again, backing off
WATCH_RETRY_MAX_S = 300.0


class ReplicaKV:
    """The mesh peer's kv on a shared store: the session identity and presence are this replica's
    own (each replica is its own presence of the member); topic cursors stay shared."""

    def __init__(self, store: Any, replica: str) -> None:
        self.store = store
        self.replica = replica

    def _key(self, namespace: str, key: str) -> str:
        if namespace == KV_NAMESPACE and key.endswith((":session", ":presence")):
            return f"{key}@{self.replica}"
        return key

    async def kv_get(self, namespace: str, key: str) -> Any | None:
        return await self.store.kv_get(namespace, self._key(namespace, key))

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        await self.store.kv_set(namespace, self._key(namespace, key), value)

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self.store.kv_delete(namespace, self._key(namespace, key))


def used_meshes(settings: Settings) -> list[str]:
    """Meshes the gateway connects to: those a route reads from or writes to. Other ``[mesh.*]``
    tables (the dev broker's ``dev_alice``/``dev_bob`` demo identities) serve the ``mesh`` CLI only."""
    used: set[str] = set()
    for route in settings.routes:
        if route.mesh:
            used.add(route.mesh)
        for b in route.binds:
            if b.gateway == MESH_GATEWAY:
                used.add(parse_mesh_chat(b.chat).mesh)
    return [name for name in settings.mesh if name in used]


def mesh_topics(runtime: Runtime, mesh: str) -> list[str]:  # topics routes read from ``mesh``
    routes = runtime.routes
    if routes is None:
        return []
    return sorted(routes.watched_topics(mesh))


async def start_mesh(runtime: Runtime, name: str) -> None:
    """Build and start the peer of ``[mesh.<name>]`` and watch the topics routes read from it."""
    from .mesh.peer import MeshPeer

    cfg = runtime.settings.mesh[name]
    runtime.keyring.add_mesh(name, cfg)
    shared = runtime.leases is not None and runtime.leases.shared  # replicas on one store
    peer = MeshPeer(
        name, cfg, kv=ReplicaKV(runtime.store, runtime.leases.replica) if shared else runtime.store,
        keyring=runtime.keyring,
        on_message=runtime.pipeline.on_mesh_inbound if runtime.pipeline is not None else None,
        on_messages=runtime.pipeline.on_mesh_inbound_many if runtime.pipeline is not None else None,
        on_state=mesh_state_callback(runtime, name),
    )
    if shared:
        from .mesh.peer import RATE_SAFETY
        from .store.leases import SharedTokenBucket

        peer.topic_gate = runtime.leases.topic_gate(name)  # one replica polls each topic
        # the broker counts per member: one bucket for all replicas of this member
        peer.bucket = SharedTokenBucket(runtime.store, f"member:{cfg.mesh_id}:{cfg.member_pubkey}",
                                        cfg.rate_burst, cfg.rate_per_minute * RATE_SAFETY)
    runtime.meshes[name] = peer
    runtime.set_state(name, GatewayState.STARTING)
    await peer.start()
    watch_topics(runtime, name)


def mesh_state_callback(runtime: Runtime, name: str) -> Callable[..., None]:
    """The peer's ``on_state``: its states as the gateway states health and readiness report."""
    mapping = {
        "connecting": GatewayState.STARTING,
        "connected": GatewayState.CONNECTED,
        "backoff": GatewayState.TRANSIENT_DISCONNECT,
        "terminal": GatewayState.BAD_CREDENTIALS,
        "stopped": GatewayState.STOPPED,
    }

    def on_state(state: Any, detail: str = "") -> None:
        if runtime.meshes.get(name) is None and str(getattr(state, "value", state)) != "stopped":
            return  # a peer replaced by a reload reporting late
        value = getattr(state, "value", state)
        runtime.set_state(name, mapping.get(str(value), GatewayState.TRANSIENT_DISCONNECT), detail or "")

    return on_state


def watch_topics(runtime: Runtime, name: str) -> None:
    """Start polling every topic of mesh ``name`` that routes read and that is not polled yet."""
    peer = runtime.meshes[name]
    tasks = runtime.watchers.setdefault(name, {})
    since_ms = int(time.time() * 1000)  # now, before /-/ready can say yes: posts from here on are ours
    for topic in mesh_topics(runtime, name):
        if topic not in tasks:
            tasks[topic] = runtime.supervisor.spawn(watch(peer, name, topic, since_ms), what=f"watch:{name}:#{topic}")


async def watch(peer: Any, mesh: str, topic: str, since_ms: int | None = None) -> None:
    """Join and poll ``topic`` once the peer is connected (the peer waits for the connection).
    Its first poll takes every row posted since ``since_ms``, however long the join took."""
    delay = WATCH_RETRY_FIRST_S
    while True:
        try:
            await peer.watch_topic(topic, since_ms=since_ms)
            return
        except MeshTerminalError as exc:  # refused for good (bad credentials...): the mesh's state says so
            log.error("mesh %s: cannot watch #%s: %s", mesh, topic, exc, extra={"mesh": mesh})
            return
        except MeshError as exc:  # no such topic (yet), a timeout...: the route cannot receive until it works
            log.log(logging.ERROR if delay == WATCH_RETRY_FIRST_S else logging.WARNING,
                    "mesh %s: cannot watch #%s: %s; trying again in %.0f s", mesh, topic, exc, delay,
                    extra={"mesh": mesh})
        await asyncio.sleep(delay)
        delay = min(delay * 2, WATCH_RETRY_MAX_S)


async def stop_mesh(runtime: Runtime, name: str) -> None:
    for task in runtime.watchers.pop(name, {}).values():  # a watch still waiting for its first connection
        task.cancel()
    peer = runtime.meshes.get(name)
    if peer is not None:
        await stop_quietly(peer.stop(), f"mesh {name}", timeout=runtime.settings.server.shutdown_timeout)
        runtime.set_state(name, GatewayState.STOPPED)
        runtime.meshes.pop(name, None)


async def stop_meshes(runtime: Runtime) -> None:
    for name in reversed(list(runtime.meshes)):
        await stop_mesh(runtime, name)


async def stop_quietly(aw: Any, what: str, timeout: float | None = None) -> None:
    """Await a stop within ``timeout``; a timeout or a failure is logged, never raised."""
    try:
        await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        log.warning("%s did not stop within %.1fs", what, timeout or 0)
    except Exception:
        log.exception("%s failed to stop cleanly", what)
