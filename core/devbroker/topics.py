"""Topic verbs (spec A.12, B.39–B.42)."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nacl.utils
from claudemesh_gateway.mesh import crypto
from nacl.public import PrivateKey

from .delivery import SilentFailure
from .model import Topic, TopicMember, TopicMemberKey
from .presence import Conn, Presence
from .util import iso, new_id, now_ms

if TYPE_CHECKING:
    from .broker import DevBroker

log = logging.getLogger(__name__)

_ID_LIKE = re.compile(r"^[a-z0-9_-]{20,}$", re.IGNORECASE)


def resolve_topic(b: DevBroker, mesh_id: str, ref: Any) -> Topic | None:
    """B.40: 20+ ``[a-z0-9_-]`` chars are tried as an id first, then as a name."""
    if not isinstance(ref, str):
        return None
    if _ID_LIKE.match(ref):
        topic = b.store.topics.get(ref)
        if topic is not None and topic.mesh_id == mesh_id:
            return topic
    return b.store.topic_by_name(mesh_id, ref)


def create_topic(b: DevBroker, mesh_id: str, name: str, creator_member_id: str | None, *,
                 description: str | None = None, visibility: str = "public",
                 encrypted: bool = True) -> tuple[Topic, bool]:
    """Idempotent on (mesh, name); the creator is (re)joined as ``lead``. New keyed topics seal a v2 key."""
    topic = b.store.topic_by_name(mesh_id, name)
    created = topic is None
    if topic is None:
        topic = Topic(id=new_id(), mesh_id=mesh_id, name=name, description=description, visibility=visibility,
                      created_by_member_id=creator_member_id, created_at=now_ms())
        creator = b.store.members.get(creator_member_id) if creator_member_id else None
        if encrypted and creator is not None:
            key = nacl.utils.random(32)
            sender = PrivateKey.generate()
            topic.encrypted_key_pubkey = bytes(sender.public_key).hex()
            sealed, nonce = crypto.seal_topic_key(key, creator.peer_pubkey, sender)
            b.store.topic_member_keys.append(TopicMemberKey(
                topic_id=topic.id, member_id=creator.id, encrypted_key=sealed, nonce=nonce, created_at=now_ms()))
        b.store.topics[topic.id] = topic
    if creator_member_id is not None:
        join_topic(b, topic, creator_member_id, role="lead", force_role=True)
    b.dirty()
    return topic, created


def join_topic(b: DevBroker, topic: Topic, member_id: str, *, role: str = "member", force_role: bool = False) -> None:
    tm = b.store.topic_member(topic.id, member_id)
    if tm is None:
        b.store.topic_members.append(TopicMember(topic_id=topic.id, member_id=member_id, role=role,
                                                 joined_at=now_ms()))
    elif force_role:
        tm.role = role
    b.dirty()


def _extra(msg: dict[str, Any]) -> dict[str, Any]:
    return {"_reqId": msg["_reqId"]} if msg.get("_reqId") is not None else {}


async def _not_found(conn: Conn, msg: dict[str, Any]) -> None:
    err: dict[str, Any] = {"type": "error", "code": "topic_not_found",
                           "message": f'topic "{msg.get("topic")}" not found'}
    if msg.get("_reqId") is not None:
        err["id"] = msg["_reqId"]
    await conn.send(err)


def _presence(conn: Conn) -> Presence:
    assert conn.presence is not None
    return conn.presence


_TopicVerb = Callable[["DevBroker", Conn, dict[str, Any], Presence, Topic], Awaitable[None]]


def _on_topic(verb: _TopicVerb) -> Callable[[DevBroker, Conn, dict[str, Any]], Awaitable[None]]:
    """A verb on the topic ``msg["topic"]`` names: called with the caller's presence and that topic,
    or answered ``topic_not_found`` when there is none."""

    @functools.wraps(verb)
    async def handler(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
        p = _presence(conn)
        topic = resolve_topic(b, p.mesh_id, msg.get("topic"))
        if topic is None:
            await _not_found(conn, msg)
            return
        await verb(b, conn, msg, p, topic)

    return handler


async def handle_topic_create(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = _presence(conn)
    name = msg.get("name")
    if not isinstance(name, str) or not name:
        raise SilentFailure("topic_create without a name")
    visibility = msg.get("visibility") if isinstance(msg.get("visibility"), str) else None
    description = msg.get("description") if isinstance(msg.get("description"), str) else None
    topic, created = create_topic(b, p.mesh_id, name, p.member_id, description=description,
                                  visibility=visibility or "public")
    await conn.send({"type": "topic_created", "topic": {"id": topic.id, "name": name,
                                                        "visibility": visibility or "public"},
                     "created": created, **_extra(msg)})


async def handle_topic_list(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = _presence(conn)
    topics = sorted((t for t in b.store.topics.values() if t.mesh_id == p.mesh_id and t.archived_at is None),
                    key=lambda t: (t.created_at, t.id))
    out = [{"id": t.id, "name": t.name, "description": t.description, "visibility": t.visibility,
            "memberCount": sum(1 for tm in b.store.topic_members if tm.topic_id == t.id),
            "createdAt": iso(t.created_at)} for t in topics]
    await conn.send({"type": "topic_list_response", "topics": out, **_extra(msg)})


@_on_topic
async def handle_topic_join(b: DevBroker, conn: Conn, msg: dict[str, Any], p: Presence, topic: Topic) -> None:
    role = msg.get("role") if msg.get("role") in ("lead", "member", "observer") else "member"
    join_topic(b, topic, p.member_id, role=role)


@_on_topic
async def handle_topic_leave(b: DevBroker, conn: Conn, msg: dict[str, Any], p: Presence, topic: Topic) -> None:
    b.store.topic_members = [tm for tm in b.store.topic_members
                             if not (tm.topic_id == topic.id and tm.member_id == p.member_id)]
    b.dirty()


@_on_topic
async def handle_topic_mark_read(b: DevBroker, conn: Conn, msg: dict[str, Any], p: Presence, topic: Topic) -> None:
    tm = b.store.topic_member(topic.id, p.member_id)
    if tm is not None:
        tm.last_read_at = now_ms()
        b.dirty()


@_on_topic
async def handle_topic_members(b: DevBroker, conn: Conn, msg: dict[str, Any], p: Presence, topic: Topic) -> None:
    members = []
    for tm in b.store.topic_members:
        member = b.store.members.get(tm.member_id)
        if tm.topic_id == topic.id and member is not None:
            members.append({"memberId": member.id, "pubkey": member.peer_pubkey, "displayName": member.display_name,
                            "role": tm.role, "joinedAt": iso(tm.joined_at), "lastReadAt": iso(tm.last_read_at)})
    await conn.send({"type": "topic_members_response", "topic": msg.get("topic"), "members": members,
                     **_extra(msg)})


def _limit(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return 50
    try:
        value = int(float(raw))
    except (TypeError, ValueError, OverflowError):
        return 50
    return max(1, min(200, value))


@_on_topic
async def handle_topic_history(b: DevBroker, conn: Conn, msg: dict[str, Any], p: Presence, topic: Topic) -> None:
    rows = [m for m in b.store.topic_messages if m.topic_id == topic.id]
    before_id = msg.get("beforeId")
    if before_id is not None:
        anchor = next((m for m in rows if m.id == before_id), None)
        rows = [] if anchor is None else [m for m in rows if m.created_at < anchor.created_at]
    rows.sort(key=lambda m: (m.created_at, m.id), reverse=True)
    out = []
    for m in rows[:_limit(msg.get("limit"))]:
        member = b.store.members.get(m.sender_member_id)
        item: dict[str, Any] = {
            "id": m.id, "senderPubkey": m.sender_session_pubkey or (member.peer_pubkey if member else None),
            "senderMemberId": m.sender_member_id, "senderName": member.display_name if member else None,
            "nonce": m.nonce, "ciphertext": m.ciphertext, "bodyVersion": m.body_version}
        if m.reply_to_id is not None:
            item["replyToId"] = m.reply_to_id
        item["createdAt"] = iso(m.created_at)
        out.append(item)
    await conn.send({"type": "topic_history_response", "topic": msg.get("topic"), "messages": out,
                     **_extra(msg)})
