"""Persisted rows of the emulated broker database (one dataclass per table)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_CAPS = ("read", "dm", "broadcast", "state-read")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def row_to_dict(row: Any) -> dict[str, Any]:
    """The row as a JSON-ready dict, equal to ``dataclasses.asdict(row)``. Queue and topic rows hold
    only scalars, and the state file (rewritten after every change) holds all of them, so those
    take a shallow copy of their fields; a row with a container in it gets ``asdict``'s deep copy."""
    cls = type(row)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    out = {name: getattr(row, name) for name in names}
    if any(isinstance(v, (list, dict, tuple, set)) or is_dataclass(v) for v in out.values()):
        return asdict(row)
    return out


def row_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(slots=True)
class Mesh:
    id: str
    slug: str
    name: str
    root_key: str                 # 43-char b64url
    owner_pubkey: str
    owner_secret: str             # 128 hex (dev broker only: it mints invites)
    created_at: int
    policy: dict[str, Any] | None = None


@dataclass(slots=True)
class Member:
    id: str
    mesh_id: str
    peer_pubkey: str
    display_name: str
    role: str = "member"          # owner | admin | member
    role_tag: str | None = None
    default_groups: list[dict[str, Any]] = field(default_factory=list)
    message_mode: str | None = None
    peer_grants: dict[str, list[str]] = field(default_factory=dict)
    revoked_at: int | None = None
    created_at: int = 0

    def caps_for(self, member_pubkey: str, session_pubkey: str | None) -> tuple[str, ...]:
        """Grant lookup: the sender's member-pubkey entry, then its session-pubkey entry, then defaults."""
        if member_pubkey in self.peer_grants:
            return tuple(self.peer_grants[member_pubkey])
        if session_pubkey and session_pubkey in self.peer_grants:
            return tuple(self.peer_grants[session_pubkey])
        return DEFAULT_CAPS


@dataclass(slots=True)
class Topic:
    id: str
    mesh_id: str
    name: str
    description: str | None
    visibility: str
    created_by_member_id: str | None
    created_at: int
    archived_at: int | None = None
    encrypted_key_pubkey: str | None = None


@dataclass(slots=True)
class TopicMember:
    topic_id: str
    member_id: str
    role: str
    joined_at: int
    last_read_at: int | None = None


@dataclass(slots=True)
class TopicMemberKey:
    topic_id: str
    member_id: str
    encrypted_key: str
    nonce: str
    created_at: int


@dataclass(slots=True)
class ApiKey:
    """``mesh.api_key``: a REST bearer key (A.13). Only the SHA-256 of the secret is kept."""

    id: str
    mesh_id: str
    label: str
    prefix: str                   # the first 11 chars of the secret (lookup index)
    secret_hash: str              # sha256 hex of the whole secret
    capabilities: list[str]
    topic_scopes: list[str] | None
    issued_by_member_id: str | None
    created_at: int
    expires_at: int | None = None  # ms
    revoked_at: int | None = None


@dataclass(slots=True)
class TopicMessage:
    id: str
    mesh_id: str
    topic_id: str
    sender_member_id: str
    sender_session_pubkey: str | None
    nonce: str
    ciphertext: str
    body_version: int
    created_at: float             # ms (see util.row_time)
    reply_to_id: str | None = None


@dataclass(slots=True)
class QueueRow:
    id: str
    mesh_id: str
    target_spec: str
    priority: str
    nonce: str
    ciphertext: str
    sender_member_id: str
    sender_session_pubkey: str | None
    created_at: float             # ms (see util.row_time)
    client_message_id: str | None = None
    request_fingerprint: str | None = None
    delivered_at: int | None = None
    claimed_at: int | None = None
    claim_id: str | None = None
    claim_expires_at: int | None = None


@dataclass(slots=True)
class Invite:
    id: str
    mesh_id: str
    token: str
    role: str
    expires_at: int               # unix seconds
    max_uses: int
    created_at: int
    used_count: int = 0
    revoked_at: int | None = None
    preset: dict[str, Any] | None = None   # display_name, role_tag, groups, message_mode overrides


@dataclass(slots=True)
class PeerState:
    mesh_id: str
    member_id: str
    groups: list[dict[str, Any]]
    summary: str | None
    last_seen_at: int
    stats: dict[str, Any]
    visible: bool = True
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Notification:
    id: str
    mesh_id: str
    topic_id: str
    message_id: str
    member_id: str
    created_at: float
    read_at: int | None = None
