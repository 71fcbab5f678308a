"""Handshake flows, reattach, dedup, offline leases and eviction (spec B.6–B.18).

Later upstream behaviour (``DevBrokerConfig.role_scoped_dedup``, default on): sessionId dedup
(B.17) is scoped by role. Upstream's launch wrapper sends a member-level ``hello`` and its
daemon a ``session_hello`` for the same Claude Code session, both with that session's UUID as
``sessionId``; at the pinned commit each kicked the other's presence on every relaunch. Later
brokers let a ``control-plane`` and a ``session`` presence with one sessionId coexist: ``hello``
replaces only ``control-plane`` entries with its sessionId, ``session_hello`` only ``session``
entries (still 1000 ``session_replaced``, deleted without ``peer_left`` or a slot back).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import delivery
from .handshake import HandshakeError, check_hello, check_session_hello, presence_fields_ok
from .model import Member, Mesh, PeerState
from .presence import Conn, Presence
from .pushes import system_push
from .util import iso, new_id, now_ms

if TYPE_CHECKING:
    from .broker import DevBroker

log = logging.getLogger(__name__)


def _groups(raw: Any) -> list[dict[str, Any]]:
    """Normalize ``[{name, role?}]`` (bare strings accepted)."""
    out: list[dict[str, Any]] = []
    if isinstance(raw, list):
        for g in raw:
            if isinstance(g, str) and g:
                out.append({"name": g})
            elif isinstance(g, dict) and isinstance(g.get("name"), str) and g["name"]:
                out.append({"name": g["name"], **({"role": g["role"]} if g.get("role") is not None else {})})
    return out


def _profile(member: Member) -> dict[str, Any]:
    return {"roleTag": member.role_tag, "groups": list(member.default_groups or []),
            "messageMode": member.message_mode or "push"}


def _display_name(msg: dict[str, Any], member: Member) -> str:
    name = msg.get("displayName")
    return name if isinstance(name, str) and name else member.display_name


async def reject(conn: Conn, err: HandshakeError) -> None:
    await conn.send({"type": "error", "code": err.code, "message": err.message})
    await conn.close(err.close_code, err.reason)


def dedup_session_id(b: DevBroker, mesh_id: str, session_id: Any, role: str, keep: Presence | None = None) -> None:
    """B.17: every other entry with this sessionId gets 1000 session_replaced and is deleted (slot leaks).

    With ``role_scoped_dedup`` (later upstream) only entries of ``role``, the role the hello creates."""
    if not isinstance(session_id, str):
        return
    for p in b.registry.in_mesh(mesh_id):
        if p is keep or p.session_id != session_id:
            continue
        if b.config.role_scoped_dedup and p.role != role:
            continue
        log.info("sessionId dedup: replacing presence %s (%s)", p.presence_id, p.display_name)
        b.registry.delete(p, decrement=False)
        p.db_disconnected = True
        b.detach_and_close(p, 1000, "session_replaced")


async def _join_event(b: DevBroker, p: Presence, *, same_member_too: bool, restored: PeerState | None) -> None:
    if restored is not None:
        frame = system_push(p.mesh_id, "peer_returned", {
            "name": p.display_name, "pubkey": p.pubkey, "groups": list(p.groups),
            "lastSeenAt": iso(restored.last_seen_at), "summary": restored.summary})
    else:
        frame = system_push(p.mesh_id, "peer_joined", {"name": p.display_name, "pubkey": p.pubkey,
                                                       "groups": list(p.groups)})
    for q in b.registry.in_mesh(p.mesh_id):
        if q is p or q.conn is None or (not same_member_too and q.member_id == p.member_id):
            continue
        await q.conn.send(frame)


async def _ack_and_drain(b: DevBroker, conn: Conn, p: Presence, ack: dict[str, Any]) -> None:
    if b.config.drain_before_ack:
        await delivery.drain(b, p)
        await conn.send(ack)
    else:
        await conn.send(ack)
        await delivery.drain(b, p)


def _attach(b: DevBroker, p: Presence, conn: Conn, msg: dict[str, Any]) -> None:
    """Swap the socket into an existing entry (reattach) and restore its presence row."""
    p.cancel_eviction()
    p.conn = conn
    conn.presence = p
    p.lease = "online"
    p.db_disconnected = False
    p.last_pong_at = p.last_ping_at = now_ms()
    if isinstance(msg.get("cwd"), str):
        p.cwd = msg["cwd"]
    if isinstance(msg.get("displayName"), str) and msg["displayName"]:
        p.display_name = msg["displayName"]


def _new_presence(b: DevBroker, conn: Conn, msg: dict[str, Any], member: Member, *, role: str,
                  session_pk: str | None, groups: list[dict[str, Any]]) -> Presence:
    p = Presence(
        presence_id=new_id(), mesh_id=member.mesh_id, member_id=member.id, member_pubkey=member.peer_pubkey,
        session_pubkey=session_pk, session_id=msg["sessionId"], pid=int(msg["pid"]), cwd=msg["cwd"],
        display_name=_display_name(msg, member), role=role, groups=groups, conn=conn,
        hostname=msg.get("hostname") if isinstance(msg.get("hostname"), str) else None,
        peer_type=msg.get("peerType") if isinstance(msg.get("peerType"), str) else None,
        channel=msg.get("channel") if isinstance(msg.get("channel"), str) else None,
        model=msg.get("model") if isinstance(msg.get("model"), str) else None,
    )
    b.registry.add(p)
    conn.presence = p
    if session_pk:
        b.store.session_owner[session_pk] = member.id
        b.dirty()
    return p


def _hello_ack(p: Presence, member: Member, mesh: Mesh) -> dict[str, Any]:
    """The ``hello_ack`` of a new or reattached presence: its id and name, the member's profile, the mesh policy."""
    ack: dict[str, Any] = {"type": "hello_ack", "presenceId": p.presence_id, "memberDisplayName": p.display_name,
                           "memberProfile": _profile(member)}
    if mesh.policy:
        ack["meshPolicy"] = mesh.policy
    return ack


def _may_insert(b: DevBroker, mesh_id: str, msg: dict[str, Any], role: str, member: Member, verb: str,
                outcome: str) -> bool:
    """Before a new presence: sessionId dedup among ``role`` presences (B.17), then whether ``msg``
    has the presence fields (False, logged and not answered, when it lacks them)."""
    dedup_session_id(b, mesh_id, msg.get("sessionId"), role)
    if presence_fields_ok(msg):
        return True
    log.warning("%s from %s lacks cwd/pid/sessionId: %s", verb, member.display_name, outcome)
    return False


async def handle_hello(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    try:
        member = check_hello(msg, store=b.store, count_of=b.registry.count,
                             capacity=b.config.max_connections_per_mesh, skew_ms=b.config.timestamp_skew_ms,
                             now=now_ms())
    except HandshakeError as err:
        log.info("hello rejected: %s", err.code)
        await reject(conn, err)
        return
    mesh = b.store.meshes[member.mesh_id]
    session_pk = msg.get("sessionPubkey") or None

    # B.14 reattach to an offline lease
    for p in b.registry.in_mesh(mesh.id):
        if p.lease != "offline":
            continue
        if (session_pk and p.session_pubkey == session_pk) or (
                not session_pk and not p.session_pubkey and p.session_id == msg.get("sessionId")
                and p.member_pubkey == member.peer_pubkey):
            _attach(b, p, conn, msg)
            log.info("hello reattached presence %s (%s)", p.presence_id, p.display_name)
            ack = _hello_ack(p, member, mesh)
            ack["services"] = []
            await _ack_and_drain(b, conn, p, ack)
            return

    if not _may_insert(b, mesh.id, msg, "control-plane", member, "hello", "presence insert fails, no reply"):
        return
    state = b.store.peer_states.get((mesh.id, member.id))
    hello_groups = _groups(msg.get("groups"))
    groups = hello_groups or (list(state.groups) if state and state.groups else list(member.default_groups or []))
    p = _new_presence(b, conn, msg, member, role="control-plane", session_pk=session_pk, groups=groups)
    if state is not None:
        p.visible, p.profile = state.visible, dict(state.profile)
        p.summary, p.stats = state.summary, dict(state.stats)
    ack = _hello_ack(p, member, mesh)
    if state is not None:
        ack.update(restored=True, lastSummary=state.summary, lastSeenAt=iso(state.last_seen_at))
        if not hello_groups:
            ack["restoredGroups"] = list(state.groups)
        ack["restoredStats"] = {k: state.stats.get(k, 0) for k in ("messagesIn", "messagesOut", "toolCalls",
                                                                      "errors")}
    ack["services"] = []
    log.info("hello: presence %s for %s (control-plane)", p.presence_id, p.display_name)
    await _ack_and_drain(b, conn, p, ack)
    await _join_event(b, p, same_member_too=False, restored=state)


async def handle_session_hello(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    try:
        member = check_session_hello(msg, store=b.store, count_of=b.registry.count,
                                     capacity=b.config.max_connections_per_mesh,
                                     skew_ms=b.config.timestamp_skew_ms,
                                     max_ttl_ms=b.config.attestation_max_ttl_ms, now=now_ms())
    except HandshakeError as err:
        log.info("session_hello rejected: %s", err.code)
        await reject(conn, err)
        return
    mesh = b.store.meshes[member.mesh_id]
    session_pk: str = msg["sessionPubkey"]

    # B.15 reattach: same session pubkey, online or offline
    for p in b.registry.in_mesh(mesh.id):
        if p.session_pubkey != session_pk:
            continue
        old = p.conn
        if old is not None and old is not conn:
            old.presence = None
            b.spawn(old.close(1000, "session_replaced"))
        _attach(b, p, conn, msg)
        if isinstance(msg.get("sessionId"), str):
            p.session_id = msg["sessionId"]
        log.info("session_hello reattached presence %s (%s)", p.presence_id, p.display_name)
        ack = {"type": "hello_ack", "presenceId": p.presence_id, "memberDisplayName": p.display_name}
        await _ack_and_drain(b, conn, p, ack)
        return

    if not _may_insert(b, mesh.id, msg, "session", member, "session_hello", "no reply"):
        return
    raw_groups = msg.get("groups")
    groups = _groups(raw_groups) if raw_groups is not None else list(member.default_groups or [])
    p = _new_presence(b, conn, msg, member, role="session", session_pk=session_pk, groups=groups)
    ack = _hello_ack(p, member, mesh)
    log.info("session_hello: presence %s for %s (session)", p.presence_id, p.display_name)
    await _ack_and_drain(b, conn, p, ack)
    await _join_event(b, p, same_member_too=True, restored=None)


def socket_closed(b: DevBroker, conn: Conn) -> None:
    """B.12: an online socket closed -> save peer_state, start the offline grace lease."""
    p = conn.presence
    conn.presence = None
    if p is None or p.conn is not conn or b.registry.entries.get(p.presence_id) is not p:
        return  # already replaced, kicked or deduped
    _save_peer_state(b, p)
    p.conn = None
    p.lease = "offline"
    p.cancel_eviction()
    if b.loop is not None:
        p.evict_handle = b.loop.call_later(b.config.grace_s, b.spawn_evict, p)
    log.info("presence %s (%s) offline; grace %.1fs", p.presence_id, p.display_name, b.config.grace_s)


def _save_peer_state(b: DevBroker, p: Presence) -> None:
    b.store.peer_states[(p.mesh_id, p.member_id)] = PeerState(
        mesh_id=p.mesh_id, member_id=p.member_id, groups=list(p.groups), summary=p.summary, last_seen_at=now_ms(),
        stats=dict(p.stats), visible=p.visible, profile=dict(p.profile))
    b.dirty()


async def evict(b: DevBroker, p: Presence) -> None:
    """B.13: grace over -> remove, give the slot back, tell other members ``peer_left``."""
    if b.registry.entries.get(p.presence_id) is not p or p.lease != "offline":
        return
    b.registry.delete(p, decrement=True)
    p.db_disconnected = True
    log.info("presence %s (%s) evicted", p.presence_id, p.display_name)
    await _peer_left(b, p)


async def evict_online(b: DevBroker, p: Presence, code: int, reason: str) -> None:
    """Evict an entry whose socket is still open (later upstream): save its peer_state, remove it,
    give the slot back, close the socket with ``code``/``reason`` and tell other members ``peer_left``.
    The client reconnects and gets a new presence (``peer_returned`` for the others)."""
    if b.registry.entries.get(p.presence_id) is not p:
        return
    _save_peer_state(b, p)
    b.registry.delete(p, decrement=True)
    p.db_disconnected = True
    log.info("presence %s (%s) evicted with its socket open: close %d %s", p.presence_id, p.display_name,
             code, reason)
    b.detach_and_close(p, code, reason)
    await _peer_left(b, p)


async def _peer_left(b: DevBroker, p: Presence) -> None:
    frame = system_push(p.mesh_id, "peer_left", {"name": p.display_name, "pubkey": p.pubkey})
    for q in b.registry.in_mesh(p.mesh_id):
        if q.member_id != p.member_id and q.conn is not None:
            await q.conn.send(frame)
