"""Values the mesh peer hands out: inbound items, roster peers, topics, states."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["MAX_TIME_MS", "STATES", "MeshInbound", "Peer", "Topic", "parse_time_ms"]

# connecting -> connected -> (backoff -> connecting ...) | terminal | stopped
STATES = ("connecting", "connected", "backoff", "terminal", "stopped")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MeshInbound:
    """One item from the mesh, decrypted. ``id`` is stable across redeliveries:
    the topic_message id for topic rows, ``client_message_id ?? messageId`` for pushes."""

    kind: Literal["topic", "dm", "broadcast"]
    mesh: str  # config name of the mesh
    mesh_id: str
    id: str
    text: str
    sender_pubkey: str = ""
    sender_member_id: str | None = None
    sender_name: str | None = None
    topic: str | None = None  # topic name
    topic_id: str | None = None
    body_version: int | None = None
    reply_to_id: str | None = None
    created_at: int = 0  # ms since the epoch
    client_message_id: str | None = None
    message_id: str | None = None  # the broker's queue id (pushes) or topic_message id (topics)
    priority: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """A roster entry from ``list_peers``. ``pubkey`` is the DM target (session pk, else member pk)."""

    pubkey: str
    member_pubkey: str = ""
    display_name: str = ""
    status: str = ""
    summary: str = ""
    groups: tuple[str, ...] = ()
    session_id: str = ""
    peer_role: str = ""
    peer_type: str = ""
    channel: str = ""
    role_tag: str | None = None
    profile: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    connected_at: str | None = None
    is_self: bool = False

    @property
    def name(self) -> str:
        return self.display_name

    def tags(self) -> set[str]:
        """Group names, plus profile tags / roleTag when present (tag routing)."""
        out = {g.lower() for g in self.groups}
        if self.role_tag:
            out.add(self.role_tag.lower())
        for key in ("tags", "capabilities"):
            val = self.profile.get(key)
            if isinstance(val, (list, tuple)):
                out.update(str(v).lower() for v in val if isinstance(v, str))
        rt = self.profile.get("roleTag")
        if isinstance(rt, str) and rt:
            out.add(rt.lower())
        return out

    @classmethod
    def from_wire(cls, d: dict[str, Any], own_keys: frozenset[str] = frozenset()) -> Peer:
        groups = []
        for g in d.get("groups") or ():
            if isinstance(g, dict) and isinstance(g.get("name"), str):
                groups.append(g["name"])
            elif isinstance(g, str):
                groups.append(g)
        profile = d.get("profile") if isinstance(d.get("profile"), dict) else {}
        pubkey = str(d.get("pubkey") or "")
        role_tag = d.get("roleTag") or profile.get("roleTag")
        return cls(
            pubkey=pubkey, member_pubkey=str(d.get("memberPubkey") or ""),
            display_name=str(d.get("displayName") or d.get("name") or ""), status=str(d.get("status") or ""),
            summary=str(d.get("summary") or ""), groups=tuple(groups), session_id=str(d.get("sessionId") or ""),
            peer_role=str(d.get("peerRole") or ""), peer_type=str(d.get("peerType") or ""),
            channel=str(d.get("channel") or ""),
            role_tag=role_tag if isinstance(role_tag, str) and role_tag else None,
            profile=dict(profile), connected_at=d.get("connectedAt") if isinstance(d.get("connectedAt"), str) else None,
            is_self=pubkey in own_keys,
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Topic:
    id: str
    name: str
    description: str = ""
    visibility: str = "public"
    member_count: int | None = None
    created_at: str | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Topic:
        mc = d.get("memberCount")
        return cls(id=str(d["id"]), name=str(d["name"]), description=str(d.get("description") or ""),
                   visibility=str(d.get("visibility") or "public"),
                   member_count=mc if isinstance(mc, int) else None,
                   created_at=d.get("createdAt") if isinstance(d.get("createdAt"), str) else None)


MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant a datetime can hold


def parse_time_ms(value: Any) -> int:
    """Milliseconds from a JSON number (ms) or an ISO 8601 string; 0 when it does not convert.

    0 (unknown) also for what no clock produces: ``NaN``, infinities (JSON ``1e999``), values at or
    before the epoch, and anything after year 9999 (``datetime`` cannot hold it). Never raises."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        if (isinstance(value, float) and not math.isfinite(value)) or not 0 < value <= MAX_TIME_MS:
            return 0
        return int(value)
    if isinstance(value, str) and value:
        try:
            text = value.strip()
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            dt = datetime.fromisoformat(text)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ms = int(dt.timestamp() * 1000)
        except (ValueError, OverflowError, OSError):
            return 0
        return ms if 0 < ms <= MAX_TIME_MS else 0
    return 0
