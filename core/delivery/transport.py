"""The delivery engine's transport: render an outbox item, send one part, record what was delivered.

``DeliveryEngine`` calls, per outbox item: ``render(item) -> (outbounds, rate limits)``,
``send(out)`` for each part not yet sent, then ``delivered(item, results)``.
Rendering happens at send time (not at enqueue), so a config reload or a
message-map entry that arrives late (a reply to a message still in flight) is
honoured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import DeliveryError, MeshError
from ..gateway import RateLimit
from ..messages import (
    Address,
    Attachment,
    Capabilities,
    Message,
    Outbound,
    SendResult,
    address_from_dict,
    address_to_dict,
    message_from_dict,
    message_to_dict,
)
from ..store.base import OutboxItem
from .addresses import MESH_GATEWAY, mesh_of, origin_labels, parse_mesh_chat
from .config import DeliveryConfig
from .text import (
    DEFAULT_ATTRIBUTION,
    attribute,
    loop_marker,
    mentions_in,
    neutralise_mentions,
    parse_via,
    split_text,
    with_hop_prefix,
    with_via,
)

__all__ = [
    "KIND_NOTICE",
    "KIND_RELAY",
    "KIND_REPLY",
    "MESH_CAPABILITIES",
    "OutboxItemFactory",
    "RoutingTransport",
    "mesh_rate_limit",
    "origin_of_native",
]

log = logging.getLogger(__name__)

#: what a mesh destination can take. Topic posts are limited to 64 KiB of base64 ciphertext
#: (A.7.4), i.e. ~48 KB of UTF-8; 8000 characters stays under that even at 4 bytes a character.
MESH_CAPABILITIES = Capabilities(max_text=8000, max_parts=10, replies=True, formatting="plain")
_CMID_NS = uuid.UUID("6f1b0c4e-3c1a-4f59-9a43-6c6d65736867")

def client_message_id(idempotency_key: str | None) -> str:
    """The mesh ``client_message_id`` of one outbound part: stable across retries of that part."""
    return str(uuid.uuid5(_CMID_NS, idempotency_key)) if idempotency_key else str(uuid.uuid4())


FANOUT_NS = "routing"  # kv namespace of the persisted tag fan-out recipient lists
KIND_RELAY = "relay"  # a routed message: attribution + loop markers
KIND_REPLY = "reply"  # a command reply from the gateway itself: sent as is
KIND_NOTICE = "notice"  # a failure notice to a mesh sender: sent as is


def mesh_rate_limit(mesh: str, cfg: Any = None) -> RateLimit:
    """The broker's per-member budget (A.7.3), shared by every lane of the mesh: ``cfg`` is the
    ``[mesh.<name>]`` table (its ``rate_per_minute`` and ``rate_burst``); without one the broker's
    defaults, 60 a minute with a burst of 10."""
    per_minute = float(getattr(cfg, "rate_per_minute", 60.0))
    burst = float(getattr(cfg, "rate_burst", 10))
    return RateLimit(scope=f"mesh:{mesh}:member", per_second=per_minute / 60.0, burst=burst)


async def _maybe(v: Any) -> Any:
    return await v if inspect.isawaitable(v) else v


async def origin_of_native(store: Any, chat: Address, native_id: str) -> str | None:
    """The core message id whose copy (or original) in ``chat`` has ``native_id``.

    ``map_reverse`` matches a lane *prefix*; an exact-lane hit is confirmed with
    ``map_get`` (``tg/-100`` must not match ``tg/-1001``), then the chat's threads.
    """
    lane = Address(chat.gateway, chat.chat).key
    found = await store.map_reverse(lane, native_id)
    if found is not None and native_id in await store.map_get(found, lane):
        return found
    return await store.map_reverse(lane + "/", native_id)


class _ByteBudget:
    """Bytes of fetched files held at once (``attachment_fetches`` x ``attachment_max_bytes``):
    a send reserves the most its files may weigh before fetching them and gives it back after."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        return n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


class RoutingTransport:
    """Implements the DeliveryEngine transport protocol for gateways and mesh destinations."""

    def __init__(self, runtime: Any) -> None:  # the running gateway (runtime.Runtime, a layer above)
        self.runtime = runtime
        self._budget: _ByteBudget | None = None

    # -- files between platforms ----------------------------------------------------------------------
    def _delivery_config(self) -> DeliveryConfig:
        cfg = getattr(getattr(self.runtime, "settings", None), "delivery", None)
        return cfg if isinstance(cfg, DeliveryConfig) else DeliveryConfig()

    def _attachment_cap(self, caps: Capabilities) -> int:
        cap = self._delivery_config().attachment_max_bytes
        if caps.max_media_bytes:
            cap = min(cap, caps.max_media_bytes)
        return cap

    def _bytes(self) -> _ByteBudget:
        if self._budget is None:
            cfg = self._delivery_config()
            self._budget = _ByteBudget(cfg.attachment_fetches * cfg.attachment_max_bytes)
        return self._budget

    @staticmethod
    def _needs_fetch(att: Attachment, message: Message, to: Address, caps: Capabilities) -> bool:
        """A reference only its origin gateway can read (``tgfile:``, ``slackfile:``), going elsewhere, or
        back to its own gateway when that one cannot reuse it (``caps.reuses_own_files``): the bytes are
        fetched here, inside the byte budget and ``attachment_max_bytes``, never by the gateway itself."""
        if att.data is not None or not att.url or att.url.startswith(("http://", "https://")):
            return False
        return to.gateway != message.origin.gateway or not caps.reuses_own_files

    def _plan_attachments(self, message: Message, to: Address, caps: Capabilities, *,
                          edit: bool = False) -> tuple[tuple[Attachment, ...], list[Attachment]]:
        """(attachments handed to the destination, attachments only described in the text).

        At most ``caps.max_files`` files go with a message, and no more foreign files than the
        fetch budget holds at this destination's cap; the rest are described. An applied edit
        (``edit``) fetches nothing: the copy already has those files, and what was described
        before is described again."""
        if not message.attachments:
            return (), []
        if not caps.media:
            return (), list(message.attachments)
        cap = self._attachment_cap(caps)
        source = self.runtime.gateways.get(message.origin.gateway)
        fetch_room = self._bytes().limit // cap if cap > 0 else 0
        passed: list[Attachment] = []
        described: list[Attachment] = []
        for att in message.attachments:
            if len(passed) >= caps.max_files:
                described.append(att)
            elif not self._needs_fetch(att, message, to, caps):
                passed.append(att)
            elif cap <= 0 or source is None or (att.size is not None and att.size > cap) or fetch_room <= 0:
                described.append(att)
            elif edit:
                continue  # carried by the original copy
            else:
                fetch_room -= 1
                passed.append(att)  # fetched from the source gateway right before the send
        return tuple(passed), described

    async def _fetch_attachments(self, out: Outbound, gw: Any, pending: Sequence[Attachment]) -> Outbound:
        """Replace the foreign references ``pending`` of ``out.attachments`` by their bytes; a file
        that cannot be had (gone, too large, not fetchable) is described in the text instead."""
        source = self.runtime.gateways.get(out.message.origin.gateway)
        cap = self._attachment_cap(gw.capabilities)
        kept: list[Attachment] = []
        described: list[Attachment] = []
        for att in out.attachments:
            if att not in pending:
                kept.append(att)
                continue
            if source is None or cap <= 0:
                described.append(att)
                continue
            try:
                data = await source.fetch_attachment(att, cap)
            except DeliveryError as exc:
                if not exc.permanent:
                    raise DeliveryError(f"fetching file {att.name!r} from {source.name}: {exc}",
                                        retry_after=exc.retry_after) from None
                log.info("file %r of %s not carried to %s (%s); described instead", att.name, out.message.id,
                         out.to, exc)
                described.append(att)
                continue
            if len(data) > cap:
                described.append(att)
                continue
            kept.append(dataclasses.replace(att, data=data, size=len(data)))
        text = out.text
        if described:
            lines = neutralise_mentions("\n".join(a.describe() for a in described))
            extra = self._render_part(out.message, lines, gw, {"binding": out.options})
            text = f"{text}\n{extra}" if text else extra
        return dataclasses.replace(out, text=text, attachments=tuple(kept))

    # -- render --------------------------------------------------------------------------------------------
    def capabilities(self, to: Address) -> Capabilities:
        if to.gateway == MESH_GATEWAY:
            return MESH_CAPABILITIES
        gw = self.runtime.gateways.get(to.gateway)
        if gw is None:
            raise DeliveryError(f"gateway {to.gateway!r} is not configured", permanent=True)
        return gw.capabilities

    async def render(self, item: OutboxItem) -> tuple[list[Outbound], Sequence[RateLimit]]:
        # raw carries the route name to the gateway (webhook payloads name it); it is never persisted
        message = message_from_dict(item.message, raw={"route": item.route})
        to = address_from_dict(item.destination)
        options: Mapping[str, Any] = item.options or {}
        caps = self.capabilities(to)

        reply_to = edit_of = None
        if message.reply_to and caps.replies:
            reply_to = await self._mapped(message.origin, message.reply_to, to)
        if message.edit_of:
            edit_of = await self._mapped(message.origin, message.edit_of, to)
        if message.deleted:
            if not (caps.deletes and edit_of):
                log.debug("delete of %s not supported on %s; skipped", message.id, to)
                return [], self._limits(to)
            out = Outbound(message=message, to=to, text="", edit_of=edit_of, options=options.get("binding", {}),
                           idempotency_key=self._idem(item, message, to, 1))
            return [out], self._limits(to)
        if edit_of is not None and not caps.edits:
            edit_of = None
        is_edit_as_new = bool(message.edit_of) and edit_of is None

        if is_edit_as_new:  # a new "(edited)" message: name the files, do not send them again
            attachments, described = (), list(message.attachments)
        else:
            attachments, described = self._plan_attachments(message, to, caps, edit=edit_of is not None)
        text = self.compose(message, to, options, caps, edited=is_edit_as_new, described=described)
        marker = loop_marker(text) if mesh_of(self.runtime, to) is not None else ""
        if marker:  # every part into a mesh carries the hop prefix / via tag, not just the first
            room = dataclasses.replace(caps, max_text=max(16, caps.max_text - len(marker)))
            parts = [marker + p for p in self._split(message, text[len(marker):], room, to, options)]
        else:
            parts = self._split(message, text, caps, to, options)
        if to.gateway == MESH_GATEWAY and parse_mesh_chat(to.chat).kind == "tag":
            targets = await self._fanout_targets(item, to, message)
            if not targets:
                log.info("no live peer carries %s; nothing to send for %s", to.chat, message.id)
        else:
            targets = [to]
        outs: list[Outbound] = []
        n = len(parts)
        binding_opts = dict(options.get("binding", {}))
        if options.get("allow_mass_mentions") and "allow_mass_mentions" not in binding_opts:
            # the route allows them: a gateway whose BindingOptions has that switch may keep them live
            # (only then: options are validated by the gateway's own model, unknown keys are errors)
            gw = self.runtime.gateways.get(to.gateway)
            fields = getattr(getattr(gw, "BindingOptions", None), "model_fields", {}) if gw is not None else {}
            if "allow_mass_mentions" in fields:
                binding_opts["allow_mass_mentions"] = True
        for target in targets:
            for i, part in enumerate(parts, 1):
                outs.append(Outbound(
                    message=message, to=target, text=part, part=i, parts=n,
                    reply_to=reply_to if i == 1 else None,
                    edit_of=edit_of if n == 1 else None,
                    attachments=attachments if i == 1 else (),
                    options=binding_opts,
                    idempotency_key=self._idem(item, message, target, i),
                ))
        return outs, self._limits(to)

    def compose(self, message: Message, to: Address, options: Mapping[str, Any], caps: Capabilities,
                *, edited: bool = False, described: Sequence[Attachment] | None = None) -> str:
        """Attributed, mention-neutralised, loop-marked text (before splitting and platform rendering).

        ``described``: attachments that travel as a line of text (default: all of them when the
        destination takes no files)."""
        kind = options.get("kind", KIND_RELAY)
        text = message.text
        if described is None:
            described = () if caps.media else message.attachments
        if described:
            lines = "\n".join(a.describe() for a in described)
            text = f"{text}\n{lines}" if text else lines
        via_marker = ""
        if kind == KIND_RELAY:
            via = parse_via(text) if message.origin.gateway == MESH_GATEWAY else None
            if via is not None:  # keep an upstream loop marker in front of our attribution
                end = text.index("] ") + 2
                via_marker, text = text[:end], text[end:]
            if text.lstrip(" ").startswith(("```", "~~~")):
                text = "\n" + text  # a leading code fence must stay at the start of a line
            mesh_name, topic = options.get("mesh") or "", options.get("topic") or ""
            origin_mesh, origin = origin_labels(self.runtime, message.origin, mesh_name)
            fields = {
                "sender": message.sender or message.sender_id or "?",
                "text": text, "gateway": message.origin.gateway, "chat": message.origin.chat,
                "mesh": mesh_name, "topic": topic, "origin_mesh": origin_mesh, "origin": origin,
            }
            text = attribute(options.get("attribution") or DEFAULT_ATTRIBUTION, fields)
            if edited:
                text = f"(edited) {text}"
        if not options.get("allow_mass_mentions", False):
            text = neutralise_mentions(text)
        if kind == KIND_RELAY and mesh_of(self.runtime, to) is not None:
            if mesh_of(self.runtime, message.origin) is not None:
                text = with_hop_prefix(message.hops + 1, via_marker + text)
            else:
                text = with_via(message.origin.gateway, text)
        else:
            text = via_marker + text
        return text

    def _split(self, message: Message, text: str, caps: Capabilities, to: Address,
               options: Mapping[str, Any]) -> list[str]:
        limit = max(1, caps.max_text)
        if to.gateway == MESH_GATEWAY:
            return split_text(text, limit, caps.max_parts)
        gw = self.runtime.gateways[to.gateway]
        for _ in range(4):
            parts = split_text(text, limit, caps.max_parts)
            rendered = [self._render_part(message, p, gw, options) for p in parts]
            longest = max(len(r) for r in rendered)
            if longest <= caps.max_text or limit <= 16:
                return rendered
            # escaping grew a part past the limit: split the plain text finer and render again
            limit = max(16, int(limit * caps.max_text / longest) - 8)
        return rendered

    def _render_part(self, message: Message, text: str, gw: Any, options: Mapping[str, Any]) -> str:
        pm = self.runtime.pm
        out = None
        if pm is not None:
            out = pm.hook.render_text(message=message, text=text, gateway=gw, app=self.runtime.app)
        if out is None:
            out = gw.render_text(message, text, options.get("binding", {}))
        return text if out is None else out

    def _limits(self, to: Address) -> Sequence[RateLimit]:
        if to.gateway == MESH_GATEWAY:  # read per item: a reload's new rate applies to the next send
            mesh = to.chat.partition(":")[0]
            meshes = getattr(getattr(self.runtime, "settings", None), "mesh", None) or {}
            return (mesh_rate_limit(mesh, meshes.get(mesh)),)
        gw = self.runtime.gateways.get(to.gateway)
        return tuple(gw.rate_limits(to)) if gw is not None else ()

    @staticmethod
    def _idem(item: OutboxItem, message: Message, to: Address, part: int) -> str:
        return f"{message.id}|{to.key}|{part}"

    async def _mapped(self, origin: Address, native_id: str, to: Address) -> str | None:
        """The native id on ``to`` of the message whose native id in ``origin``'s chat is ``native_id``."""
        if to.gateway == origin.gateway and to.chat == origin.chat:
            return native_id  # same chat (a command reply): the platform's own id
        store = self.runtime.store
        origin_id = await origin_of_native(store, origin, native_id)
        if origin_id is None:
            return None
        ids = await store.map_get(origin_id, to.key)
        touch = getattr(store, "map_touch", None)
        if ids and touch is not None:  # a reply or edit still arrives: the map rows' reply window restarts
            await touch(origin_id)
        return ids[0] if ids else None

    async def _fanout_targets(self, item: OutboxItem, to: Address, message: Message) -> list[Address]:
        """The recipients of a tag fan-out, resolved on the first attempt and persisted, so a retry
        after a partial send resumes at the same place even if the roster changed meanwhile."""
        store = self.runtime.store
        key = f"fanout:{item.id}"
        saved = await store.kv_get(FANOUT_NS, key)
        if isinstance(saved, list):
            return [Address(MESH_GATEWAY, str(chat)) for chat in saved]
        targets = await self._tagged(to, message)
        await store.kv_set(FANOUT_NS, key, [t.chat for t in targets])
        return targets

    async def _tagged(self, to: Address, message: Message) -> list[Address]:
        """``<mesh>:tag:<tag>`` -> one DM address per live peer carrying the tag (sorted: stable
        part order), never the gateway itself nor the message's own sender on that mesh."""
        mc = parse_mesh_chat(to.chat)
        peer = self._peer(mc.mesh)
        try:
            peers = await _maybe(peer.peers_with_tag(mc.value))
        except MeshError as exc:
            raise DeliveryError(f"roster of {mc.mesh} unavailable: {exc}") from exc
        sender = ""
        if message.origin.gateway == MESH_GATEWAY and message.origin.chat.partition(":")[0] == mc.mesh:
            sender = message.sender_id.lower()
        keys = set()
        for p in peers:
            key = str(_get(p, "pubkey") or "").lower()
            member = str(_get(p, "member_pubkey") or "").lower()
            if not key or _get(p, "is_self") or (sender and sender in (key, member)):
                continue
            keys.add(key)
        return [Address(MESH_GATEWAY, f"{mc.mesh}:@{k}") for k in sorted(keys)]

    # -- send ----------------------------------------------------------------------------------------------------
    async def send(self, out: Outbound) -> SendResult:
        if out.to.gateway == MESH_GATEWAY:
            return await self._send_mesh(out)
        gw = self.runtime.gateways.get(out.to.gateway)
        if gw is None:
            raise DeliveryError(f"gateway {out.to.gateway!r} is not configured", permanent=True)
        pending = [a for a in out.attachments if self._needs_fetch(a, out.message, out.to, gw.capabilities)]
        if pending:
            held = await self._bytes().acquire(len(pending) * self._attachment_cap(gw.capabilities))
            try:  # the bytes stay reserved until the send is over
                return await gw.send(await self._fetch_attachments(out, gw, pending))
            finally:
                await self._bytes().release(held)
        return await gw.send(out)

    def _peer(self, mesh: str) -> Any:
        peer = self.runtime.meshes.get(mesh)
        if peer is None:
            configured = mesh in (getattr(self.runtime.settings, "mesh", None) or {})
            raise DeliveryError(f"mesh {mesh!r} is not connected", permanent=not configured)
        return peer

    async def _send_mesh(self, out: Outbound) -> SendResult:
        mc = parse_mesh_chat(out.to.chat)
        peer = self._peer(mc.mesh)
        cmid = client_message_id(out.idempotency_key or f"{out.message.id}|{out.to.key}|{out.part}")
        try:
            if mc.kind == "topic":
                self._ensure_encryption(peer, mc.mesh, mc.value)
                mid = await peer.post_topic(mc.value, out.text, reply_to_id=out.reply_to,
                                            mentions=mentions_in(out.text), client_message_id=cmid)
                return SendResult(native_ids=(str(mid),) if mid else ())
            if mc.kind == "peer":
                pubkey = await self._pubkey(peer, mc.value)
                qid = await peer.send_dm(pubkey, out.text, client_message_id=cmid)
                return SendResult(native_ids=(str(qid),) if qid else ())
        except MeshError as exc:
            raise DeliveryError(f"mesh {mc.mesh}: {exc}") from exc
        raise DeliveryError(f"cannot send to {out.to.chat} directly (tags are expanded at render)", permanent=True)

    def _ensure_encryption(self, peer: Any, mesh: str, topic: str) -> None:
        """Make the peer's key ring seal ``topic`` the way its route says (``encryption``), and
        refuse to post in any other mode. Uses the key ring's public ``mode``/``add_mesh``."""
        table = self.runtime.routes
        want = table.explicit_encryption(mesh, topic) if table is not None else None
        keyring = getattr(peer, "keyring", None)
        if want is None or keyring is None or not callable(getattr(keyring, "mode", None)):
            return
        if keyring.mode(mesh, "", topic) == want:
            return
        cfg = getattr(peer, "cfg", None)
        if cfg is not None and callable(getattr(keyring, "add_mesh", None)):
            keyring.add_mesh(mesh, table.apply_encryption({mesh: cfg})[mesh])
            log.info("mesh %s: applied the routes' encryption settings to the key ring", mesh)
        if keyring.mode(mesh, "", topic) != want:
            raise DeliveryError(f"mesh {mesh}: route wants {want} for #{topic} but the key ring would seal "
                                f"{keyring.mode(mesh, '', topic)}; refusing to post", permanent=True)

    @staticmethod
    async def _pubkey(peer: Any, who: str) -> str:
        if len(who) == 64 and all(c in "0123456789abcdef" for c in who):
            return who
        try:
            found = await _maybe(peer.resolve_peer(who))
        except (LookupError, ValueError, MeshError) as exc:
            raise DeliveryError(f"peer {who!r}: {exc}") from exc
        pubkey = _get(found, "pubkey") if found is not None else None
        if not pubkey:
            raise DeliveryError(f"peer {who!r} is not online")
        return str(pubkey)

    # -- record ----------------------------------------------------------------------------------------------------
    async def delivered(self, item: OutboxItem, results: Sequence[SendResult]) -> None:
        """Record the message map (origin id -> native ids on this lane) for replies and edits.
        The engine emits MessageDelivered."""
        ids = [nid for r in results for nid in r.native_ids if nid]
        if ids:
            await self.runtime.store.map_put(item.message["id"], item.lane, ids)
        if item.destination.get("gateway") == MESH_GATEWAY and ":tag:" in str(item.destination.get("chat", "")):
            await self.runtime.store.kv_delete(FANOUT_NS, f"fanout:{item.id}")

    async def failed(self, item: OutboxItem, error: str, permanent: bool) -> None:
        """After a failed attempt: on a permanent failure of a route with ``notify_failures``,
        queue a short DM to the mesh sender of the message (once per message and destination)."""
        options = item.options or {}
        if permanent and item.destination.get("gateway") == MESH_GATEWAY \
                and ":tag:" in str(item.destination.get("chat", "")):
            await self.runtime.store.kv_delete(FANOUT_NS, f"fanout:{item.id}")  # a dlq retry resolves afresh
        if not permanent or not options.get("notify_failures") or options.get("kind", KIND_RELAY) != KIND_RELAY:
            return
        message = message_from_dict(item.message)
        sender = message.sender_id.lower()
        if message.origin.gateway != MESH_GATEWAY or len(sender) != 64:
            return
        mesh = message.origin.chat.partition(":")[0]
        to = Address(MESH_GATEWAY, f"{mesh}:@{sender}")
        dest = address_from_dict(item.destination)
        snippet = message.text if len(message.text) <= 60 else message.text[:57] + "..."
        reason = error if len(error) <= 200 else error[:197] + "..."
        notice = Message(
            id=f"{message.id}:notice:{dest.key}", origin=message.origin, sender="claudemesh-gateway",
            text=f"claudemesh-gateway could not deliver your message \"{snippet}\" to {dest}: {reason}",
        )
        row = OutboxItemFactory.make(notice, to, route=f"notice:{item.route}", kind=KIND_NOTICE)
        if await self.runtime.store.accept(notice.id, [row]):
            delivery = self.runtime.delivery
            if delivery is not None and callable(getattr(delivery, "kick", None)):
                delivery.kick()
            log.info("queued a failure notice for %s to its sender", message.id)


class OutboxItemFactory:
    """Builds outbox rows (kept here so the transport and the pipeline agree on the options shape)."""

    @staticmethod
    def make(message: Message, to: Address, *, route: str, kind: str = KIND_RELAY,
             attribution: str | None = None, allow_mass_mentions: bool = False, notify_failures: bool = False,
             mesh: str | None = None, topic: str | None = None,
             binding: Mapping[str, Any] | None = None, message_dict: dict[str, Any] | None = None) -> OutboxItem:
        """``message_dict``: ``message_to_dict(message)`` when the caller has it already (one message
        to several destinations shares one dict; nothing mutates it)."""
        return OutboxItem(
            lane=to.key, route=route, destination=address_to_dict(to),
            message=message_to_dict(message) if message_dict is None else message_dict,
            options={
                "kind": kind, "attribution": attribution or DEFAULT_ATTRIBUTION,
                "allow_mass_mentions": allow_mass_mentions, "notify_failures": notify_failures,
                "mesh": mesh, "topic": topic, "binding": dict(binding or {}),
            },
        )


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)
