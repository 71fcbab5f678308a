"""The dispatch pipeline: every inbound message, from any gateway or mesh, goes through here once.

Steps (ARCHITECTURE.md, "The path of a message"):

1. dedup      the store's inbox ledger (``seen`` first, then ``accept`` is the atomic check)
2. normalise  leading ``tag:<name>`` tokens (stripped) + static binding tags + plugin tags
3. admit      ``allow_message`` hooks (any False drops), route allow/deny lists
4. loop guard own identities, never back to the origin address, visited meshes, ``[via X]``
              markers, hop limit (``__cmh<n>:`` prefixes, the route's ``max_hops``, default 2)
5. route      the RouteTable + the ``message_destinations`` hook; in-chat commands
6. enqueue    one outbox row per destination, in ONE ``store.accept`` transaction, then
              ``delivery.kick()``. ``submit`` returns only after the commit, so the caller
              acknowledges its source after the message is durable.

The Pipeline is also the DeliveryEngine's transport (``render``/``send``/``delivered``,
delegated to :class:`~claudemesh_gateway.routing.transport.RoutingTransport`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..events import MessageDropped, MessageQueued, MessageReceived
from ..gateway import RateLimit, SubmitResult
from ..messages import Address, Message, Outbound, SendResult
from ..store.base import OutboxItem
from .commands import BOT_SENDER, CommandHandler, parse_command
from .config import MESH_GATEWAY, mesh_of
from .table import DEFAULT_ATTRIBUTION, Destination, RouteTable, mesh_address
from .text import parse_hop_prefix, parse_leading_tags, parse_via
from .transport import KIND_RELAY, KIND_REPLY, OutboxItemFactory, RoutingTransport

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["Pipeline", "outbox_item", "own_identities"]

log = logging.getLogger(__name__)


def outbox_item(message: Message, dest: Destination, *, kind: str = KIND_RELAY) -> OutboxItem:
    """The outbox row for ``message`` to ``dest`` (everything render needs, JSON-safe)."""
    return OutboxItemFactory.make(
        message, dest.address, route=dest.route, kind=kind, attribution=dest.attribution,
        allow_mass_mentions=dest.allow_mass_mentions, notify_failures=dest.notify_failures,
        mesh=dest.mesh, topic=dest.topic, binding=dest.options,
    )


def own_identities(peer: Any) -> set[str]:
    """Pubkeys and member ids a mesh peer speaks as (its echoes are loops)."""
    out: set[str] = set()
    for attr in ("own_keys", "own_pubkeys"):
        own = getattr(peer, attr, None)
        if callable(own):
            own = own()
        if isinstance(own, Iterable) and not isinstance(own, (str, bytes)):
            out |= {str(k).lower() for k in own if k}
    cfg = getattr(peer, "cfg", None)
    for obj, attr in ((peer, "pubkey"), (peer, "member_pubkey"), (peer, "session_pubkey"), (peer, "member_id"),
                      (cfg, "member_id"), (cfg, "member_pubkey"), (cfg, "pubkey")):
        v = getattr(obj, attr, None) if obj is not None else None
        if isinstance(v, str) and v:
            out.add(v.lower())
    return out


def _same_chat(a: Address, b: Address) -> bool:
    if a.gateway != b.gateway:
        return False
    if a.gateway == MESH_GATEWAY:  # pubkeys are case-insensitive hex
        if a.chat.lower() != b.chat.lower():
            return False
    elif a.chat != b.chat:
        return False
    return a.thread is None or b.thread is None or a.thread == b.thread


async def _maybe(v: Any) -> Any:
    return await v if inspect.isawaitable(v) else v


class Pipeline:
    """``submit`` for gateways, ``on_mesh_inbound`` for mesh peers, transport for the DeliveryEngine."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.transport = RoutingTransport(runtime)
        self.commands = CommandHandler(runtime)

    @property
    def table(self) -> RouteTable:
        table = self.runtime.routes
        return table if table is not None else RouteTable.empty()

    # -- DeliveryEngine transport ----------------------------------------------------------------------------
    async def render(self, item: OutboxItem) -> tuple[list[Outbound], Sequence[RateLimit]]:
        return await self.transport.render(item)

    async def send(self, out: Outbound) -> SendResult:
        return await self.transport.send(out)

    async def delivered(self, item: OutboxItem, results: Sequence[SendResult]) -> None:
        await self.transport.delivered(item, results)

    async def failed(self, item: OutboxItem, error: str, permanent: bool) -> None:
        await self.transport.failed(item, error, permanent)

    # -- mesh ingress ------------------------------------------------------------------------------------------------
    async def on_mesh_inbound(self, mesh_or_inbound: Any, inbound: Any = None) -> SubmitResult:
        """A topic row or DM from a mesh peer (``on_message`` callback). Called as
        ``on_mesh_inbound(inbound)`` or ``on_mesh_inbound(mesh_name, inbound)``."""
        if inbound is None:
            inbound, mesh = mesh_or_inbound, mesh_or_inbound.mesh
        else:
            mesh = mesh_or_inbound
        return await self.submit(self.mesh_message(mesh, inbound))

    @staticmethod
    def mesh_message(mesh: str, inbound: Any) -> Message:
        """MeshInbound -> Message: hop prefix parsed and stripped, ``[via X]`` noted, stable id."""
        hops, text = parse_hop_prefix(inbound.text or "")
        via = parse_via(text)
        sender_pubkey = (inbound.sender_pubkey or "").lower()
        kind = getattr(inbound, "kind", "topic")
        if kind == "topic" and inbound.topic:
            origin = mesh_address(mesh, topic=inbound.topic)
            mid = f"mesh:{mesh}:{inbound.id}"
            native = str(inbound.id)
        else:
            origin = mesh_address(mesh, peer=sender_pubkey)
            # the peer already made id stable across redeliveries (client_message_id ?? messageId)
            mid = f"mesh:{mesh}:{inbound.id}"
            native = None
        created = _created(getattr(inbound, "created_at", None))
        return Message(
            id=mid, origin=origin, sender=inbound.sender_name or sender_pubkey[:8] or "?",
            sender_id=sender_pubkey, text=text, native_id=native,
            reply_to=str(inbound.reply_to_id) if getattr(inbound, "reply_to_id", None) else None,
            hops=hops, visited=(mesh,), created=created,
            raw={"via": via, "member_id": getattr(inbound, "sender_member_id", None), "kind": kind},
        )

    # -- submit ---------------------------------------------------------------------------------------------------------
    async def submit(self, message: Message) -> SubmitResult:
        """Dedup, admit, loop-guard, route and durably enqueue ``message``. Returns after the commit."""
        store = self.runtime.store
        if store is None:
            raise RuntimeError("the store is not open")
        if await store.seen(message.id):
            return self._dropped(message, "duplicate", status="duplicate")
        table = self.table
        message = self.normalise(table, message)
        self.runtime.emit(MessageReceived(message=message))

        if self._is_own(message):
            return await self._drop_recorded(message, "loop")
        if not await self._plugins_allow(message):
            return await self._drop_recorded(message, "denied")

        command = parse_command(message.text) if (message.is_command or message.text.startswith("/")) else None
        if command is not None and self.commands.authorised(table, message):
            return await self._command(table, message, *command)

        resolution = table.match(message)
        dests = list(resolution.destinations)
        dests += await self._hook_destinations(message, {d.address.key for d in dests})
        kept, reasons = self.loop_guard(table, message, dests)
        if not kept:
            if reasons:
                reason = "hop_limit" if "hop_limit" in reasons else "loop"
            elif resolution.denied and len(resolution.denied) == len(resolution.matched):
                reason = "denied"
            else:
                reason = "no_route"
            return await self._drop_recorded(message, reason)
        items = [outbox_item(message, d) for d in kept]
        return await self._enqueue(message, items, [(d.address, d.route) for d in kept])

    async def send_test_message(self, route: str, text: str, *, actor: str = "admin") -> dict[str, Any]:
        """Queue ``text`` to every destination of ``route`` (admin "test route"). LookupError if the
        route does not exist. The message bypasses sources and loop rules: it comes from nowhere."""
        r = self.table.route(route)
        if r is None:
            raise LookupError(f"no route named {route!r}")
        message = Message(
            id=f"test:{route}:{uuid.uuid4().hex}", origin=Address("admin", actor), sender=f"{BOT_SENDER} test",
            sender_id=actor, text=text,
        )
        dests: list[Destination] = []
        if r.topic_is_destination and r.topic_address is not None:
            dests.append(Destination(route=r.name, address=r.topic_address, mesh=r.cfg.mesh, topic=r.cfg.topic,
                                     attribution=r.cfg.attribution or DEFAULT_ATTRIBUTION))
        for b in r.binds:
            if b.outbound:
                dests.append(Destination(route=r.name, address=b.address, options=dict(b.options),
                                         attribution=r.cfg.attribution or DEFAULT_ATTRIBUTION,
                                         mesh=r.cfg.mesh, topic=r.cfg.topic))
        if not dests:
            return {"message_id": message.id, "status": "dropped", "reason": "no_route", "destinations": []}
        items = [outbox_item(message, d) for d in dests]
        result = await self._enqueue(message, items, [(d.address, d.route) for d in dests])
        return {"message_id": message.id, "status": result.status, "destinations": [str(d.address) for d in dests]}

    def normalise(self, table: RouteTable, message: Message) -> Message:
        tags, text = parse_leading_tags(message.text)
        all_tags = frozenset(message.tags) | tags | table.static_tags(message.origin)
        is_command = message.is_command or parse_command(text) is not None
        if text == message.text and all_tags == message.tags and is_command == message.is_command:
            return message
        return dataclasses.replace(message, text=text, tags=all_tags, is_command=is_command)

    def loop_guard(self, table: RouteTable, message: Message,
                   dests: Sequence[Destination]) -> tuple[list[Destination], list[str]]:
        """Destinations that pass the loop rules, and the reasons the others were removed."""
        kept: list[Destination] = []
        reasons: list[str] = []
        origin = message.origin
        origin_mesh = mesh_of(self.runtime, origin)
        via = message.raw.get("via") if origin.gateway == MESH_GATEWAY else None
        for d in dests:
            to = d.address
            if _same_chat(to, origin):
                reasons.append("origin")
                continue
            if via is not None and to.gateway != MESH_GATEWAY and via.lower() in (
                    to.gateway.lower(), table.gateway_kind(to.gateway).lower()):
                reasons.append("loop")  # it came from that surface through another bridge
                continue
            dest_mesh = mesh_of(self.runtime, to)
            if dest_mesh is not None and origin_mesh is not None:
                limit = d.max_hops if d.max_hops is not None else table.max_hops(dest_mesh)
                if message.hops + 1 > limit:
                    reasons.append("hop_limit")
                    continue
                if dest_mesh in message.visited and dest_mesh != origin_mesh:
                    reasons.append("loop")
                    continue
            kept.append(d)
        if reasons:
            log.debug("loop guard removed %d destination(s) of %s: %s", len(reasons), message.id, reasons)
        return kept, [r for r in reasons if r != "origin"]

    # -- helpers ---------------------------------------------------------------------------------------------------------
    def _is_own(self, message: Message) -> bool:
        if message.origin.gateway != MESH_GATEWAY:
            return False
        peer = self.runtime.meshes.get(message.origin.chat.partition(":")[0])
        if peer is None:
            return False
        own = own_identities(peer)
        member = message.raw.get("member_id")
        return bool(own) and (message.sender_id.lower() in own or (bool(member) and str(member).lower() in own))

    async def _plugins_allow(self, message: Message) -> bool:
        pm = self.runtime.pm
        if pm is None:
            return True
        for impl in reversed(pm.hook.allow_message.get_hookimpls()):
            try:
                kwargs = {"message": message, "app": self.runtime.app}
                verdict = await _maybe(impl.function(*(kwargs[a] for a in impl.argnames)))
            except Exception:  # fail closed: a broken admission plugin must not open the gate
                log.exception("plugin %r failed in allow_message(); dropping %s", impl.plugin_name, message.id)
                return False
            if verdict is False:
                log.info("plugin %r refused %s", impl.plugin_name, message.id)
                return False
        return True

    async def _hook_destinations(self, message: Message, have: set[str]) -> list[Destination]:
        pm = self.runtime.pm
        if pm is None:
            return []
        out: list[Destination] = []
        for impl in reversed(pm.hook.message_destinations.get_hookimpls()):
            try:
                kwargs = {"message": message, "app": self.runtime.app}
                result = await _maybe(impl.function(*(kwargs[a] for a in impl.argnames)))
            except Exception:
                log.exception("plugin %r failed in message_destinations()", impl.plugin_name)
                continue
            for address in result or ():
                if not isinstance(address, Address) or address.key in have:
                    continue
                if address.gateway != MESH_GATEWAY and address.gateway not in self.runtime.gateways:
                    log.warning("plugin %r named unknown gateway %r; ignored", impl.plugin_name, address.gateway)
                    continue
                have.add(address.key)
                out.append(Destination(route=f"plugin:{impl.plugin_name}", address=address))
        return out

    async def _command(self, table: RouteTable, message: Message, name: str, args: str) -> SubmitResult:
        result = await self.commands.handle(table, message, name, args)
        reply = Message(
            id=f"{message.id}:reply", origin=message.origin, sender=BOT_SENDER, text=result.reply,
            reply_to=message.native_id, created=message.created,
        )
        targets: list[tuple[Address, str]] = [(message.origin, f"command:{name}")]
        back = Destination(route=f"command:{name}", address=message.origin,
                           options=table.binding_options(message.origin))
        items = [outbox_item(reply, back, kind=KIND_REPLY)]
        for extra, to in result.extra:
            items.append(outbox_item(extra, Destination(route=f"command:{name}", address=to,
                                                        attribution=result.attribution or DEFAULT_ATTRIBUTION)))
            targets.append((to, f"command:{name}"))
        log.info("command /%s from %s", name, message.origin)
        return await self._enqueue(message, items, targets)

    async def _enqueue(self, message: Message, items: list[OutboxItem],
                       targets: list[tuple[Address, str]]) -> SubmitResult:
        store = self.runtime.store
        if not await store.accept(message.id, items):
            return self._dropped(message, "duplicate", status="duplicate")
        if message.native_id and not message.edit_of and not message.deleted:
            try:  # lets replies on other chats find this message's original (not needed for delivery)
                await store.map_put(message.id, message.origin.key, [message.native_id])
                if message.origin.thread:  # replies sent back to the chat look it up by the chat's lane
                    chat = Address(message.origin.gateway, message.origin.chat)
                    await store.map_put(message.id, chat.key, [message.native_id])
            except Exception:
                log.exception("could not record the origin id of %s", message.id)
        for to, route in targets:
            self.runtime.emit(MessageQueued(message=message, to=to, route=route))
        self.kick()
        log.debug("queued %s to %d destination(s)", message.id, len(items))
        return SubmitResult(status="queued", destinations=len(items))

    def kick(self) -> None:
        delivery = self.runtime.delivery
        kick = getattr(delivery, "kick", None) if delivery is not None else None
        if callable(kick):
            kick()

    async def _drop_recorded(self, message: Message, reason: str) -> SubmitResult:
        """Drop, but record the id so a redelivery is recognised as a duplicate."""
        if not await self.runtime.store.accept(message.id, []):
            return self._dropped(message, "duplicate", status="duplicate")
        return self._dropped(message, reason)

    def _dropped(self, message: Message, reason: str, *, status: str = "dropped") -> SubmitResult:
        level = logging.DEBUG if reason in ("duplicate", "loop", "no_route") else logging.INFO
        log.log(level, "dropped %s from %s: %s", message.id, message.origin, reason)
        self.runtime.emit(MessageDropped(message=message, reason=reason))
        return SubmitResult(status=status, reason=reason)  # type: ignore[arg-type]


def _created(created_ms: Any) -> datetime:
    """A mesh row's ``created_at`` (ms) as a datetime; the receipt time when it is missing or does not
    convert (NaN, infinite, out of datetime's range), so a bad timestamp never blocks a message."""
    if created_ms and not isinstance(created_ms, bool):
        try:
            return datetime.fromtimestamp(created_ms / 1000, UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            log.debug("mesh row created_at %.40r does not convert; using the receipt time", created_ms)
    return datetime.now(UTC)
