"""``send``/``ack``, fan-out, drains and claims, ``client_ack``, ``message_status`` (spec B.21–B.38, B.46)."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import TYPE_CHECKING, Any

from .model import Notification, QueueRow, TopicMessage
from .presence import Conn, Presence
from .pushes import drained_push, live_push
from .util import iso, js_len, new_id, now_ms, row_time

if TYPE_CHECKING:
    from .broker import DevBroker

log = logging.getLogger(__name__)

RATE_LIMIT_ERROR = "rate_limit: max 60 msg/min (burst 10) \u2014 slow down"
NO_PEER_ERROR = "no connected peer for target (not online, or targetSpec is your own key without another session)"
BLOCKED_ERROR = "blocked by recipient grants (sender lacks dm capability)"
PRIORITIES = ("now", "next", "low")
_MENTION = re.compile(r"@([A-Za-z0-9_.-]+)")
_BASE62_ID = re.compile(r"^[0-9A-Za-z]{8,32}$")


class SilentFailure(Exception):
    """A handler error: logged, never answered (B.3)."""


def classify(target: str) -> str:
    if target in ("*", "@all"):
        return "broadcast"
    if target.startswith("@"):
        return "group"
    if target.startswith("#"):
        return "topic"
    return "direct"


def _ack_fail(ack_id: Any, error: str) -> dict[str, Any]:
    return {"type": "ack", "id": ack_id, "messageId": "", "queued": False, "error": error}


def _preflight(b: DevBroker, p: Presence, target: str) -> tuple[list[Presence], set[str]] | str:
    """B.24: candidates (never the sending connection; offline leases count) or an ack error."""
    others = [q for q in b.registry.in_mesh(p.mesh_id) if q is not p]
    cands = [q for q in others if q.member_pubkey == target or q.session_pubkey == target]
    if not cands:
        member = b.store.member_by_pubkey(p.mesh_id, target)
        if member is None:
            owner_id = b.store.session_owner.get(target)
            owner = b.store.members.get(owner_id) if owner_id else None
            if owner is not None and owner.mesh_id == p.mesh_id and owner.revoked_at is None:
                member = owner
        if member is not None:
            cands = [q for q in others if q.member_id == member.id]
    if not cands:
        return NO_PEER_ERROR
    members = {q.member_id for q in cands}
    if not any(_allows(b, mid, p, "dm") for mid in members):
        return BLOCKED_ERROR
    return cands, members


def _allows(b: DevBroker, recipient_member_id: str, sender: Presence, cap: str) -> bool:
    member = b.store.members.get(recipient_member_id)
    return member is not None and cap in member.caps_for(sender.member_pubkey, sender.session_pubkey)


def _write_topic_message(b: DevBroker, p: Presence, row: QueueRow, msg: dict[str, Any]) -> None:
    """B.26: append a topic_message when ``#<id>`` names a topic of the mesh; swallow every failure."""
    topic = b.store.topics.get(row.target_spec[1:])
    if topic is None or topic.mesh_id != p.mesh_id:
        log.debug("send to %s: no such topic id; row %s is a black hole", row.target_spec, row.id)
        return
    body_version = msg.get("bodyVersion", 1)
    if body_version is None:
        body_version = 1
    if isinstance(body_version, float) and body_version.is_integer():
        body_version = int(body_version)
    if not isinstance(body_version, int) or isinstance(body_version, bool):
        log.info("send to %s: non-integer bodyVersion %r, history insert fails (ack still queued)",
                 row.target_spec, body_version)
        return
    reply_to = msg.get("replyToId")
    parent = b.store.topic_message(reply_to) if isinstance(reply_to, str) else None
    tm = TopicMessage(
        id=new_id(), mesh_id=p.mesh_id, topic_id=topic.id, sender_member_id=p.member_id,
        sender_session_pubkey=p.session_pubkey, nonce=row.nonce, ciphertext=row.ciphertext,
        body_version=body_version, created_at=row.created_at,
        reply_to_id=parent.id if parent is not None and parent.topic_id == topic.id else None)
    b.store.topic_messages.append(tm)
    _notify_mentions(b, p, tm, msg)


def _notify_mentions(b: DevBroker, p: Presence, tm: TopicMessage, msg: dict[str, Any]) -> None:
    mentions = msg.get("mentions")
    if isinstance(mentions, list):
        names = {m.lower().lstrip("@") for m in mentions[:16] if isinstance(m, str)}
    else:
        try:
            text = base64.b64decode(tm.ciphertext, validate=True).decode("utf-8")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            text = ""
        names = {m.lower() for m in _MENTION.findall(text)}
    if not names:
        return
    for tmember in b.store.topic_members:
        member = b.store.members.get(tmember.member_id)
        if (tmember.topic_id == tm.topic_id and member is not None and member.id != p.member_id
                and member.display_name.lower() in names):
            b.store.notifications.append(Notification(
                id=new_id(), mesh_id=p.mesh_id, topic_id=tm.topic_id, message_id=tm.id, member_id=member.id,
                created_at=tm.created_at))


async def handle_send(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = conn.presence
    assert p is not None
    ack_id = msg.get("id") if msg.get("id") is not None else ""
    if not b.buckets.take(p.member_id):                                       # B.21
        await conn.send(_ack_fail(ack_id, RATE_LIMIT_ERROR))
        return
    target, nonce, ciphertext = msg.get("targetSpec"), msg.get("nonce"), msg.get("ciphertext")
    size = js_len(ciphertext) + js_len(nonce) + js_len(target)
    limit = b.config.max_message_bytes
    if size > limit:                                                          # B.22
        await conn.send(_ack_fail(ack_id, f"payload too large: {size} bytes > MAX_MESSAGE_BYTES={limit}"))
        return
    if not isinstance(target, str):
        raise SilentFailure("send without targetSpec")
    kind = classify(target)                                                   # B.23
    cand_members: set[str] = set()
    if kind == "direct":                                                      # B.24
        pre = _preflight(b, p, target)
        if isinstance(pre, str):
            await conn.send(_ack_fail(ack_id, pre))
            return
        cand_members = pre[1]
    priority = msg.get("priority")
    if not isinstance(nonce, str) or not isinstance(ciphertext, str) or priority not in PRIORITIES:
        raise SilentFailure("send with missing nonce/ciphertext or invalid priority: queue insert fails")
    cmid, fp = msg.get("client_message_id"), msg.get("request_fingerprint")
    row = QueueRow(                                                           # B.25
        id=new_id(), mesh_id=p.mesh_id, target_spec=target, priority=priority, nonce=nonce,
        ciphertext=ciphertext, sender_member_id=p.member_id, sender_session_pubkey=p.session_pubkey,
        created_at=row_time(b.config.unique_ms_timestamps) + b.config.clock_offset_ms,
        client_message_id=cmid if isinstance(cmid, str) else None,
        request_fingerprint=fp if isinstance(fp, str) else None)
    b.store.queue.append(row)
    if kind == "topic":
        _write_topic_message(b, p, row, msg)                                  # B.26
    b.dirty()
    await conn.send({"type": "ack", "id": ack_id, "messageId": row.id, "queued": True})   # B.27
    await _fan_out(b, p, row, kind, cand_members, msg)                        # B.28


async def _fan_out(b: DevBroker, p: Presence, row: QueueRow, kind: str, cand_members: set[str],
                   msg: dict[str, Any]) -> None:
    if kind in ("broadcast", "group"):
        group = None if kind == "broadcast" else row.target_spec[1:]
        frame = live_push(row, p, msg.get("replyToId"))
        for q in b.registry.in_mesh(p.mesh_id):
            if q.member_pubkey == p.member_pubkey or not q.visible or not _allows(b, q.member_id, p, "broadcast"):
                continue
            if group is not None and group not in q.group_names:
                continue
            if q.conn is not None:
                await q.conn.send(frame)
        row.delivered_at = now_ms()
        b.dirty()
    elif kind == "direct":
        for q in b.registry.in_mesh(p.mesh_id):
            if q is p:
                continue
            matched = (q.member_pubkey == row.target_spec or q.session_pubkey == row.target_spec
                       or q.member_id in cand_members)
            if matched and _allows(b, q.member_id, p, "dm"):
                await drain(b, q, skip_star_session=p.session_pubkey)


def _ancestors(group: str) -> list[str]:
    parts = group.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def select_and_claim(b: DevBroker, p: Presence, *, skip_star_session: str | None = None) -> list[QueueRow]:
    """B.31/B.32, synchronous so concurrent drains always claim disjoint rows."""
    now = now_ms()
    allowed = PRIORITIES if p.status == "idle" else ("now",)
    targets = {p.member_pubkey, "*", "@all"}
    if p.session_pubkey:
        targets.add(p.session_pubkey)
    for g in p.group_names:
        targets.update("@" + a for a in _ancestors(g))
    targets.update("#" + tid for tid in b.store.member_topic_ids(p.member_id))
    rows = [
        r for r in b.store.queue
        if r.mesh_id == p.mesh_id and r.delivered_at is None
        and (r.claim_expires_at is None or r.claim_expires_at < now)
        and r.priority in allowed and r.target_spec in targets
        and not (skip_star_session and r.target_spec == "*" and r.sender_session_pubkey == skip_star_session)
    ]
    rows.sort(key=lambda r: (r.created_at, r.id))
    claim_ms = int(b.config.claim_s * 1000)
    for r in rows:
        r.claimed_at, r.claim_id, r.claim_expires_at = now, p.presence_id, now + claim_ms
    return rows


async def drain(b: DevBroker, p: Presence, *, skip_star_session: str | None = None) -> int:
    """Claim the presence's rows and push them; a push into a dead socket is a no-op but the claim stands."""
    rows = select_and_claim(b, p, skip_star_session=skip_star_session)
    if not rows:
        return 0
    b.dirty()
    log.debug("drain %s (%s): %d rows", p.presence_id, p.display_name, len(rows))
    for r in rows:
        sender = b.store.members.get(r.sender_member_id)
        if p.conn is not None:
            await p.conn.send(drained_push(r, sender.peer_pubkey if sender else ""))
    return len(rows)


async def handle_client_ack(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    """B.37: mark matching undelivered rows delivered; no reply."""
    p = conn.presence
    assert p is not None
    bid, cid = msg.get("brokerMessageId"), msg.get("clientMessageId")
    bid = bid if isinstance(bid, str) and bid else None
    cid = cid if isinstance(cid, str) and cid else None
    if bid is None and cid is None:
        return
    now = now_ms()
    mine = {p.member_pubkey, p.session_pubkey}
    for r in b.store.queue:
        if r.mesh_id != p.mesh_id or r.delivered_at is not None:
            continue
        if not ((bid is not None and r.id == bid) or (cid is not None and r.client_message_id == cid)):
            continue
        if r.target_spec in mine or r.target_spec[:1] in ("*", "@", "#"):
            r.delivered_at = now
            b.dirty()


def _recipients(b: DevBroker, row: QueueRow) -> list[dict[str, Any]]:
    kind = classify(row.target_spec)
    sender = b.store.members.get(row.sender_member_id)
    if kind == "topic":
        topic_members = {tm.member_id for tm in b.store.topic_members if tm.topic_id == row.target_spec[1:]}
        match = [q for q in b.registry.in_mesh(row.mesh_id) if q.member_id in topic_members]
    elif kind in ("broadcast", "group"):
        group = None if kind == "broadcast" else row.target_spec[1:]
        match = [q for q in b.registry.in_mesh(row.mesh_id)
                 if (sender is None or q.member_pubkey != sender.peer_pubkey)
                 and (group is None or group in q.group_names)]
    else:
        match = [q for q in b.registry.in_mesh(row.mesh_id)
                 if row.target_spec in (q.member_pubkey, q.session_pubkey)]
    out = []
    for q in match:
        if row.delivered_at is not None:
            status = "delivered"
        elif q.lease == "offline" or q.db_disconnected:
            status = "disconnected"
        else:
            status = "held"
        out.append({"name": q.display_name, "pubkey": q.pubkey, "status": status})
    if not match and kind == "direct":
        member = b.store.member_by_pubkey(row.mesh_id, row.target_spec, revoked=None)
        if member is not None:
            out.append({"name": member.display_name, "pubkey": member.peer_pubkey,
                        "status": "delivered" if row.delivered_at is not None else "disconnected"})
    return out


async def handle_message_status(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    """B.46: 8–32 base62 chars, fewer than 32 is a prefix; any member may query its mesh's messages."""
    p = conn.presence
    assert p is not None
    req = msg.get("_reqId")
    extra = {"_reqId": req} if req is not None else {}
    mid = msg.get("messageId")
    if not isinstance(mid, str) or not _BASE62_ID.match(mid):
        n = js_len(mid)
        await conn.send({"type": "error", "code": "invalid_argument",
                         "message": f"messageId must be 8-32 base62 chars (got {n})", **extra})
        return
    rows = [r for r in b.store.queue if r.mesh_id == p.mesh_id and (r.id == mid or r.id.startswith(mid))]
    if not rows:
        await conn.send({"type": "error", "code": "not_found", "message": "message not found", **extra})
        return
    if len(rows) > 1:
        await conn.send({"type": "error", "code": "ambiguous_prefix",
                         "message": f"prefix matched {len(rows)} messages \u2014 use a longer id", **extra})
        return
    row = rows[0]
    await conn.send({
        "type": "message_status_result", "messageId": row.id, "targetSpec": row.target_spec,
        "delivered": row.delivered_at is not None, "deliveredAt": iso(row.delivered_at),
        "recipients": _recipients(b, row), **extra})


def sweep_claims(b: DevBroker) -> int:
    """B.36: clear expired claims; pushes nothing."""
    now, n = now_ms(), 0
    for r in b.store.queue:
        if r.delivered_at is None and r.claim_expires_at is not None and r.claim_expires_at < now:
            r.claimed_at = r.claim_id = r.claim_expires_at = None
            n += 1
    if n:
        b.dirty()
    return n


def purge_old(b: DevBroker) -> int:
    """B.36: delete undelivered rows older than the purge age (the ``#name`` black hole included)."""
    cutoff = now_ms() - int(b.config.purge_age_s * 1000)
    before = len(b.store.queue)
    b.store.queue = [r for r in b.store.queue if not (r.delivered_at is None and r.created_at < cutoff)]
    n = before - len(b.store.queue)
    if n:
        b.dirty()
    return n
