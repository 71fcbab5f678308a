"""Roster and presence verbs: ``list_peers``, groups/summary/status/stats, visibility, profile,
and the admin verbs ``kick``/``disconnect``/``ban`` (spec B.19, B.43–B.45, A.15)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .presence import Conn, Presence
from .pushes import system_push
from .util import iso, now_ms

if TYPE_CHECKING:
    from .broker import DevBroker

log = logging.getLogger(__name__)


def _p(conn: Conn) -> Presence:
    assert conn.presence is not None
    return conn.presence


def _extra(msg: dict[str, Any]) -> dict[str, Any]:
    return {"_reqId": msg["_reqId"]} if msg.get("_reqId") is not None else {}


def peer_view(p: Presence) -> dict[str, Any]:
    view: dict[str, Any] = {
        "pubkey": p.pubkey, "memberPubkey": p.member_pubkey, "displayName": p.display_name, "status": p.status,
        "summary": p.summary, "groups": list(p.groups), "sessionId": p.session_id,
        "connectedAt": iso(p.connected_at), "cwd": p.cwd, "peerRole": p.role,
    }
    for key, value in (("hostname", p.hostname), ("peerType", p.peer_type), ("channel", p.channel),
                       ("model", p.model)):
        if value is not None:
            view[key] = value
    if p.stats:
        view["stats"] = dict(p.stats)
    view["visible"] = p.visible
    view["profile"] = dict(p.profile)
    return view


async def handle_list_peers(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    me = _p(conn)
    peers = [peer_view(q) for q in b.registry.in_mesh(me.mesh_id)
             if not q.db_disconnected and (q.visible or q.member_id == me.member_id)]
    await conn.send({"type": "peers_list", "peers": peers, **_extra(msg)})


async def handle_join_group(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p, name = _p(conn), msg.get("name")
    if not isinstance(name, str) or not name:
        return
    entry: dict[str, Any] = {"name": name}
    if msg.get("role") is not None:
        entry["role"] = msg["role"]
    p.groups = [g for g in p.groups if g.get("name") != name] + [entry]


async def handle_leave_group(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = _p(conn)
    p.groups = [g for g in p.groups if g.get("name") != msg.get("name")]


async def handle_set_summary(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    summary = msg.get("summary")
    _p(conn).summary = summary if isinstance(summary, str) else None


async def handle_set_status(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    """``dnd`` sticks; a manual ``working``/``idle`` clears it (status is otherwise computed)."""
    status = msg.get("status")
    if status in ("idle", "working", "dnd"):
        _p(conn).manual_status = status


async def handle_set_stats(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    stats = msg.get("stats")
    if isinstance(stats, dict):
        _p(conn).stats = dict(stats)


def _visibility_ack(msg: dict[str, Any]) -> dict[str, Any]:
    req = msg.get("_reqId")
    return {"type": "ack", "id": req if req is not None else "", "messageId": "", "queued": False, **_extra(msg)}


async def handle_set_visible(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = _p(conn)
    p.visible = bool(msg.get("visible"))
    await conn.send(_visibility_ack(msg))
    frame = system_push(p.mesh_id, "peer_visible" if p.visible else "peer_hidden",
                        {"name": p.display_name, "pubkey": p.pubkey})
    for q in b.registry.in_mesh(p.mesh_id):
        if q is not p and q.conn is not None:
            await q.conn.send(frame)


async def handle_set_profile(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = _p(conn)
    for key in ("avatar", "title", "bio", "capabilities"):
        if key in msg:
            p.profile[key] = msg[key]
    await conn.send(_visibility_ack(msg))


# -- admin verbs -------------------------------------------------------------------------------

def _is_admin(b: DevBroker, p: Presence) -> bool:
    member = b.store.members.get(p.member_id)
    mesh = b.store.meshes.get(p.mesh_id)
    return member is not None and (member.role in ("owner", "admin")
                                   or (mesh is not None and mesh.owner_pubkey == member.peer_pubkey))


def _matches(q: Presence, target: str) -> bool:
    return target in (q.pubkey, q.member_pubkey, q.session_id, q.presence_id) or (
        q.display_name.casefold() == target.casefold())


def _select(b: DevBroker, me: Presence, msg: dict[str, Any]) -> tuple[list[Presence], bool]:
    """``{all:true}``, ``{stale:true}`` (offline leases and stale rows) or ``{target:<name|pubkey|sessionId>}``."""
    others = [q for q in b.registry.in_mesh(me.mesh_id) if q is not me]
    if msg.get("all") is True:
        return others, False
    if msg.get("stale"):
        return [q for q in others if q.lease == "offline" or q.db_disconnected], True
    target = msg.get("target")
    if isinstance(target, str) and target:
        return [q for q in others if _matches(q, target)], False
    return [], False


async def _admin(b: DevBroker, conn: Conn, msg: dict[str, Any], verb_past: str) -> Presence | None:
    """The caller's presence when it is an owner or admin; None (``forbidden`` sent) otherwise."""
    me = _p(conn)
    if _is_admin(b, me):
        return me
    await conn.send({"type": "error", "code": "forbidden", "message": f"only owner or admin can {verb_past}",
                     **_extra(msg)})
    return None


def _evict(b: DevBroker, q: Presence, code: int, reason: str) -> None:
    """Drop presence ``q`` from the registry and close its connection with ``code``/``reason``."""
    b.registry.delete(q, decrement=False)
    q.db_disconnected = True
    b.detach_and_close(q, code, reason)


async def handle_kick(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    me = await _admin(b, conn, msg, "kicked")
    if me is None:
        return
    selected, _ = _select(b, me, msg)
    kicked, skipped = [], 0
    for q in selected:
        if q.role == "control-plane":
            skipped += 1
            continue
        kicked.append(q.display_name)
        _evict(b, q, 4001, "kicked")
    log.info("kick by %s: %s (skipped %d control-plane)", me.display_name, kicked, skipped)
    await conn.send({"type": "kick_ack", "kicked": kicked, "affected": len(kicked),
                     "skipped_control_plane": skipped, **_extra(msg)})


async def handle_disconnect(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    me = await _admin(b, conn, msg, "disconnected")
    if me is None:
        return
    selected, stale = _select(b, me, msg)
    names = []
    for q in selected:
        names.append(q.display_name)
        _evict(b, q, 1000, "disconnected_stale" if stale else "disconnected")
    log.info("disconnect by %s: %s", me.display_name, names)
    await conn.send({"type": "disconnect_ack", "kicked": names, "affected": len(names), **_extra(msg)})


async def handle_ban(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    """Revoke the target member and close all its presences with 4002 ``banned``."""
    me = await _admin(b, conn, msg, "banned")
    if me is None:
        return
    target = msg.get("target")
    member = None
    if isinstance(target, str) and target:
        member = next((m for m in b.store.members.values()
                       if m.mesh_id == me.mesh_id and m.revoked_at is None
                       and (target in (m.id, m.peer_pubkey) or m.display_name.casefold() == target.casefold())),
                      None)
        if member is None:
            owner = next((q for q in b.registry.in_mesh(me.mesh_id) if _matches(q, target)), None)
            member = b.store.members.get(owner.member_id) if owner else None
    if member is None or member.id == me.member_id:
        await conn.send({"type": "error", "code": "not_found", "message": "member not found", **_extra(msg)})
        return
    member.revoked_at = now_ms()
    b.dirty()
    affected = 0
    for q in b.registry.in_mesh(me.mesh_id):
        if q.member_id == member.id:
            affected += 1
            _evict(b, q, 4002, "banned")
    log.info("ban by %s: %s (%d presences)", me.display_name, member.display_name, affected)
    await conn.send({"type": "ban_ack", "banned": member.display_name, "memberId": member.id,
                     "affected": affected, **_extra(msg)})
