"""The dispatch pipeline: every inbound message, from any gateway or mesh, goes through here once.
(Over 400 lines: the one path every message takes, kept in one place to be read top to bottom.)

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

``submit_many`` does the same for several messages (a topic poll's rows) with one round to the
store for their enqueues.

The Pipeline is also the DeliveryEngine's transport (``render``/``send``/``delivered``,
delegated to :class:`~claudemesh_gateway.delivery.transport.RoutingTransport`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from ..delivery.text import parse_hop_prefix, parse_leading_tags, parse_via
from ..delivery.transport import KIND_RELAY, KIND_REPLY, OutboxItemFactory, RoutingTransport
from ..events import MessageDropped, MessageQueued, MessageReceived
from ..gateway import RateLimit, SubmitResult
from ..messages import Address, Message, Outbound, SendResult, message_to_dict
from ..store.base import OutboxItem
from ..trace import TraceRecorder
from .commands import BOT_SENDER, CommandHandler, parse_command
from .config import MESH_GATEWAY, mesh_of
from .table import DEFAULT_ATTRIBUTION, Destination, RouteTable, mesh_address

__all__ = ["Pipeline", "outbox_item", "own_identities"]

log = logging.getLogger(__name__)


def outbox_item(message: Message, dest: Destination, *, kind: str = KIND_RELAY,
                message_dict: dict[str, Any] | None = None) -> OutboxItem:
    """The outbox row for ``message`` to ``dest`` (everything render needs, JSON-safe).
    ``message_dict``: ``message_to_dict(message)``, when one message goes to several destinations."""
    return OutboxItemFactory.make(
        message, dest.address, route=dest.route, kind=kind, attribution=dest.attribution,
        allow_mass_mentions=dest.allow_mass_mentions, notify_failures=dest.notify_failures,
        mesh=dest.mesh, topic=dest.topic, binding=dest.options, message_dict=message_dict,
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


# what own_identities() reads from a peer; its result is reused while these stay the same values
_PEER_IDENTITY_ATTRS = ("own_keys", "own_pubkeys", "pubkey", "member_pubkey", "session_pubkey", "member_id", "cfg")


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Enqueue:
    """``submit``'s plan for a message to enqueue: its outbox items and where they go."""

    message: Message
    items: list[OutboxItem]
    targets: list[tuple[Address, str]]
    matched: Sequence[str] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Command:
    """``submit``'s plan for an authorised in-chat command."""

    table: RouteTable
    message: Message
    name: str
    args: str


class Pipeline:
    """``submit`` for gateways, ``on_mesh_inbound`` for mesh peers, transport for the DeliveryEngine."""

    def __init__(self, runtime: Any) -> None:  # the running gateway (runtime.Runtime, a layer above)
        self.runtime = runtime
        self.transport = RoutingTransport(runtime)
        self.commands = CommandHandler(runtime)
        self._own_cache: dict[int, tuple[Any, tuple[Any, ...], set[str]]] = {}

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

    async def on_mesh_inbound_many(self, inbounds: Sequence[Any]) -> list[SubmitResult]:
        """Several topic rows of one poll, oldest first (the peer's ``on_messages`` callback): as
        ``on_mesh_inbound`` each, their enqueues sharing one round to the store (:meth:`submit_many`)."""
        return await self.submit_many([self.mesh_message(i.mesh, i) for i in inbounds])

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
        plan = await self._plan(message)
        if isinstance(plan, _Enqueue):
            return await self._enqueue(plan.message, plan.items, plan.targets, plan.matched)
        if isinstance(plan, _Command):
            return await self._command(plan)
        return plan

    async def submit_many(self, messages: Sequence[Message]) -> list[SubmitResult]:
        """``submit`` of each message, in order, returning after every commit. The messages to enqueue
        go to the store together (``accept_many``: one group commit, one wake-up of this task, their
        outbox rows in this order); a command is run after the messages before it are committed.
        Should a message's write fail, the others are still recorded and the first error is raised
        (the caller reads the batch again; dedup knows the ones that were committed)."""
        accept_many = getattr(self.runtime.store, "accept_many", None)
        if accept_many is None or len(messages) < 2:
            return [await self.submit(m) for m in messages]
        results: list[SubmitResult | None] = [None] * len(messages)
        batch: list[tuple[int, _Enqueue]] = []
        error: BaseException | None = None
        for i, message in enumerate(messages):
            plan = await self._plan(message)
            if isinstance(plan, _Enqueue):
                batch.append((i, plan))
                continue
            if isinstance(plan, _Command):
                error = error or await self._enqueue_many(accept_many, batch, results)
                batch = []
                plan = await self._command(plan)
            results[i] = plan
        error = error or await self._enqueue_many(accept_many, batch, results)
        if error is not None:
            raise error
        return [r for r in results if r is not None]

    async def _plan(self, message: Message) -> SubmitResult | _Enqueue | _Command:
        """Every step of ``submit`` before the enqueue: the outcome (dropped, a duplicate), the command
        to run, or the outbox items to enqueue."""
        store = self.runtime.store
        if store is None:
            raise RuntimeError("the store is not open")
        trace = self._trace()
        if await store.seen(message.id):
            if trace is not None:
                trace.duplicate(message)
            return self._dropped(message, "duplicate", status="duplicate")
        table = self.table
        message = self.normalise(table, message)
        self.runtime.emit(MessageReceived(message=message))
        if trace is not None:
            trace.received(message)

        if self._is_own(message):
            return await self._drop_recorded(message, "loop", "own identity (echo of this gateway)")
        if not await self._plugins_allow(message):
            return await self._drop_recorded(message, "denied", "allow_message plugin hook")

        command = parse_command(message.text) if (message.is_command or message.text.startswith("/")) else None
        if command is not None and self.commands.authorised(table, message):
            return _Command(table, message, *command)

        resolution = table.match(message)
        dests = list(resolution.destinations)
        dests += await self._hook_destinations(message, dests)
        kept, reasons = self.loop_guard(table, message, dests)
        if not kept:
            rule = ""
            if reasons:
                reason = "hop_limit" if "hop_limit" in reasons else "loop"
                rule = f"loop guard: {', '.join(sorted(set(reasons)))}"
            elif resolution.denied and len(resolution.denied) == len(resolution.matched):
                reason = "denied"
                rule = f"sender refused by route(s) {', '.join(resolution.denied)}"
            else:
                reason = "no_route"
                rule = f"matched {', '.join(resolution.matched)}, no destination" if resolution.matched else ""
            return await self._drop_recorded(message, reason, rule, resolution.matched)
        shared = message_to_dict(message) if len(kept) > 1 else None  # encoded once, not per destination
        items = [outbox_item(message, d, message_dict=shared) for d in kept]
        return _Enqueue(message, items, [(d.address, d.route) for d in kept], resolution.matched)

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
        trace = self._trace()
        if trace is not None:
            trace.received(message)
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
        own = self._own_identities(peer)
        member = message.raw.get("member_id")
        return bool(own) and (message.sender_id.lower() in own or (bool(member) and str(member).lower() in own))

    def _own_identities(self, peer: Any) -> set[str]:
        """``own_identities(peer)``, remembered while the peer's own attributes are the same
        immutable values and its ``cfg`` is a frozen model (reading a MeshConfig's member key
        costs more than the rest of the loop guard)."""
        token = tuple(getattr(peer, a, None) for a in _PEER_IDENTITY_ATTRS)
        hit = self._own_cache.get(id(peer))
        if hit is not None and hit[0] is peer and hit[1] == token:
            return hit[2]
        own = own_identities(peer)
        cfg = token[-1]
        if all(t is None or isinstance(t, (str, frozenset)) for t in token[:-1]) and (
                cfg is None or (isinstance(cfg, BaseModel) and cfg.model_config.get("frozen"))):
            if len(self._own_cache) > 64:
                self._own_cache.clear()
            self._own_cache[id(peer)] = (peer, token, own)
        return own

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

    async def _hook_destinations(self, message: Message, dests: Sequence[Destination]) -> list[Destination]:
        pm = self.runtime.pm
        impls = pm.hook.message_destinations.get_hookimpls() if pm is not None else ()
        if not impls:
            return []
        have = {d.address.key for d in dests}
        out: list[Destination] = []
        for impl in reversed(impls):
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

    async def _command(self, plan: _Command) -> SubmitResult:
        table, message, name, args = plan.table, plan.message, plan.name, plan.args
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
                       targets: list[tuple[Address, str]], matched: Sequence[str] = ()) -> SubmitResult:
        store = self.runtime.store
        trace = self._trace()
        if trace is not None:
            items = trace.stamp(message, items)  # the OpenTelemetry context travels in the rows
        origin_map = self._origin_map(message)
        accept_mapped = getattr(store, "accept_mapped", None) if origin_map else None
        if accept_mapped is not None:  # one transaction for the message and its origin id
            accepted = await accept_mapped(message.id, items, origin_map)
        else:
            accepted = await store.accept(message.id, items)
        if accepted and accept_mapped is None and origin_map:
            try:
                for lane, native_ids in origin_map:
                    await store.map_put(message.id, lane, native_ids)
            except Exception:
                log.exception("could not record the origin id of %s", message.id)
        result = self._enqueued(message, len(items), targets, matched, accepted)
        if accepted:
            self.kick()
        return result

    async def _enqueue_many(self, accept_many: Any, batch: list[tuple[int, _Enqueue]],
                            results: list[SubmitResult | None]) -> BaseException | None:
        """Enqueue the planned messages of ``batch`` in one ``accept_many``; each outcome goes into
        ``results`` at its index. Returns the first write error (its message has no result)."""
        if not batch:
            return None
        trace = self._trace()
        entries = []
        for _i, plan in batch:
            items = trace.stamp(plan.message, plan.items) if trace is not None else plan.items
            entries.append((plan.message.id, items, self._origin_map(plan.message)))
        outcomes = await accept_many(entries)
        error: BaseException | None = None
        queued = False
        for (i, plan), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                error = error or outcome
                continue
            results[i] = self._enqueued(plan.message, len(plan.items), plan.targets, plan.matched, bool(outcome))
            queued = queued or bool(outcome)
        if queued:
            self.kick()
        return error

    @staticmethod
    def _origin_map(message: Message) -> list[tuple[str, list[str]]]:
        """The origin's own id lets replies on other chats find this message's original (not needed
        for delivery); replies sent back to a threaded chat look it up by the chat's lane too."""
        origin_map: list[tuple[str, list[str]]] = []
        if message.native_id and not message.edit_of and not message.deleted:
            origin_map.append((message.origin.key, [message.native_id]))
            if message.origin.thread:
                chat = Address(message.origin.gateway, message.origin.chat)
                origin_map.append((chat.key, [message.native_id]))
        return origin_map

    def _enqueued(self, message: Message, n: int, targets: list[tuple[Address, str]], matched: Sequence[str],
                  accepted: bool) -> SubmitResult:
        """What a committed enqueue says: queued, or a duplicate (the ledger had the id already)."""
        trace = self._trace()
        if not accepted:
            if trace is not None:
                trace.duplicate(message)
            return self._dropped(message, "duplicate", status="duplicate")
        if trace is not None:
            trace.queued(message, targets, matched)
        for to, route in targets:
            self.runtime.emit(MessageQueued(message=message, to=to, route=route))
        log.debug("queued %s to %d destination(s)", message.id, n)
        return SubmitResult(status="queued", destinations=n)

    def kick(self) -> None:
        delivery = self.runtime.delivery
        kick = getattr(delivery, "kick", None) if delivery is not None else None
        if callable(kick):
            kick()

    async def _drop_recorded(self, message: Message, reason: str, rule: str = "",
                             routes: Sequence[str] = ()) -> SubmitResult:
        """Drop, but record the id so a redelivery is recognised as a duplicate."""
        if not await self.runtime.store.accept(message.id, []):
            return self._dropped(message, "duplicate", status="duplicate")
        trace = self._trace()
        if trace is not None:
            trace.dropped_message(message, reason, rule, routes)
        return self._dropped(message, reason)

    def _trace(self) -> TraceRecorder | None:
        """The message-trace recorder (claudemesh_gateway.trace), None when tracing is off."""
        trace = getattr(self.runtime, "trace", None)
        return trace if trace is not None and trace.enabled else None

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
