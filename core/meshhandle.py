"""``ctx.mesh(name)``: a gateway's key-free view of a mesh, over the core's mesh peer.

The bridge plugin uses it to carry topics into other meshes. Text crosses this
interface in plaintext; encryption and decryption stay in the peer and its key
ring. A mesh that no route uses is connected on first use, and stopped with the
others when the app stops.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import DeliveryError, MeshError
from .gateway import RateLimit
from .meshes import start_mesh
from .messages import Address, Message

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["CoreMeshHandle", "MeshSubscribers"]

OnMessage = Callable[[Message], Awaitable[None]]


class MeshSubscribers:
    """Which gateway consumes which (mesh, topic), and the dispatcher installed on each peer."""

    def __init__(self) -> None:
        self._by_topic: dict[tuple[str, str], dict[str, OnMessage]] = {}

    def add(self, mesh: str, topic: str, gateway: str, callback: OnMessage) -> None:
        self._by_topic.setdefault((mesh, topic), {})[gateway] = callback

    def remove_gateway(self, gateway: str) -> None:
        for subs in self._by_topic.values():
            subs.pop(gateway, None)

    def has(self, mesh: str, topic: str) -> bool:
        return bool(self._by_topic.get((mesh, topic)))

    def topics(self, mesh: str) -> set[str]:
        """Topics of ``mesh`` at least one gateway consumes."""
        return {topic for (m, topic), subs in self._by_topic.items() if m == mesh and subs}

    def gateways(self, mesh: str) -> set[str]:
        """Gateways that consume some topic of ``mesh``."""
        return {gw for (m, _), subs in self._by_topic.items() if m == mesh for gw in subs}

    def meshes(self) -> set[str]:
        """Meshes with at least one subscriber."""
        return {m for (m, _), subs in self._by_topic.items() if subs}

    def install(self, runtime: Runtime, peer: Any) -> None:
        """Route the peer's topic rows to subscribers as well as to the pipeline (once per peer:
        a peer that already dispatches is left alone; a new peer for the same mesh gets its own)."""
        if getattr(peer.on_message, "_mesh_subscribers_dispatch", False):
            return
        original = peer.on_message
        mesh = peer.name

        def subscribers(inbound: Any) -> dict[str, Any] | None:
            return self._by_topic.get((mesh, inbound.topic or "")) if inbound.kind == "topic" else None

        async def dispatch(inbound: Any) -> None:
            subs = subscribers(inbound)
            if subs:
                for gateway, callback in list(subs.items()):
                    await callback(_as_message(runtime, mesh, gateway, inbound))
            if original is not None and (not subs or _routes_read(runtime, mesh, inbound)):
                result = original(inbound)
                if hasattr(result, "__await__"):
                    await result

        dispatch._mesh_subscribers_dispatch = True  # type: ignore[attr-defined]
        peer.on_message = dispatch
        original_many = getattr(peer, "on_messages", None)
        if original_many is not None:
            async def dispatch_many(inbounds: list[Any]) -> None:
                """A poll's rows: to the pipeline at once while no subscriber wants any of them,
                else one by one through ``dispatch`` (in order)."""
                if any(subscribers(inbound) for inbound in inbounds):
                    for inbound in inbounds:
                        await dispatch(inbound)
                else:
                    await original_many(inbounds)

            peer.on_messages = dispatch_many


def _routes_read(runtime: Runtime, mesh: str, inbound: Any) -> bool:
    routes = runtime.routes
    if inbound.kind != "topic" or routes is None:
        return True
    return inbound.topic in routes.watched_topics(mesh)


def _as_message(runtime: Runtime, mesh: str, gateway: str, inbound: Any) -> Message:
    from .routing.pipeline import Pipeline

    base = Pipeline.mesh_message(mesh, inbound)  # hop prefix parsed and stripped, stable times, visited
    return dataclasses.replace(base, id=f"{gateway}:{mesh}:{inbound.id}", origin=Address(gateway, inbound.topic))


class CoreMeshHandle:
    """The core's :class:`~claudemesh_gateway.gateway.MeshHandle` for gateway ``gateway``."""

    def __init__(self, runtime: Runtime, name: str, gateway: str) -> None:
        if name not in runtime.settings.mesh:
            raise KeyError(f"no [mesh.{name}] table in the configuration")
        self._runtime = runtime
        self.name = name
        self._gateway = gateway

    def __repr__(self) -> str:
        return f"<CoreMeshHandle {self.name} for {self._gateway}>"

    @property
    def state(self) -> str:
        peer = self._runtime.meshes.get(self.name)
        return peer.state if peer is not None else "stopped"

    @property
    def mesh_id(self) -> str:
        return self._runtime.settings.mesh[self.name].mesh_id

    @property
    def rate_limit(self) -> RateLimit:
        from .delivery.transport import mesh_rate_limit

        return mesh_rate_limit(self.name, self._runtime.settings.mesh.get(self.name))

    async def _peer(self) -> Any:
        runtime = self._runtime
        peer = runtime.meshes.get(self.name)
        if peer is None:
            log.info("mesh %s connected for gateway %s", self.name, self._gateway)
            await start_mesh(runtime, self.name)  # the one place that builds peers (key ring, store, state)
            peer = runtime.meshes[self.name]
        runtime.mesh_subscribers.install(runtime, peer)
        return peer

    async def watch_topic(self, topic: str, on_message: OnMessage) -> None:
        peer = await self._peer()
        runtime = self._runtime
        runtime.mesh_subscribers.add(self.name, topic, self._gateway, on_message)
        # Joining needs a connection; a far mesh that is down must not block the gateway's start.
        # Tracked with the routes' watchers: stopping the mesh cancels it, a reload unwatches the
        # topic once neither a route nor a gateway reads it.
        task = runtime.supervisor.spawn(peer.watch_topic(topic), what=f"watch:{self.name}:#{topic}:{self._gateway}")
        watchers = runtime.watchers.setdefault(self.name, {})
        if topic not in watchers or watchers[topic].done():
            watchers[topic] = task

    async def post_topic(self, topic: str, text: str, *, reply_to: str | None = None,
                         idempotency_key: str | None = None) -> str | None:
        from .delivery.text import mentions_in
        from .delivery.transport import client_message_id

        peer = await self._peer()
        try:
            return await peer.post_topic(topic, text, reply_to_id=reply_to, mentions=mentions_in(text),
                                         client_message_id=client_message_id(idempotency_key))
        except DeliveryError:
            raise
        except (MeshError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"mesh {self.name}: {exc}") from exc

    async def send_dm(self, peer_ref: str, text: str) -> str:
        peer = await self._peer()
        try:
            target = await peer.resolve_peer(peer_ref)
            return await peer.send_dm(target.pubkey, text)
        except DeliveryError:
            raise
        except LookupError as exc:
            raise DeliveryError(f"mesh {self.name}: {exc}", permanent=True) from exc
        except (MeshError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"mesh {self.name}: {exc}") from exc

    async def peers(self) -> list[dict[str, Any]]:
        peer = await self._peer()
        return [
            {"name": p.display_name, "pubkey": p.pubkey, "groups": list(getattr(p, "groups", ()) or ()),
             "status": getattr(p, "status", None)}
            for p in await peer.peers()
        ]
