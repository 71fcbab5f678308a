"""Values that travel through the core and the hooks.

Frozen, slotted, keyword-only dataclasses: no plugin can mutate what the next one
sees; derive a changed copy with ``dataclasses.replace``. pydantic is used only at
the edges (config, vendor payloads, mesh frames), which convert to these types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

__all__ = [
    "Address",
    "Attachment",
    "Capabilities",
    "Message",
    "Outbound",
    "SendResult",
    "address_from_dict",
    "address_to_dict",
    "message_from_dict",
    "message_to_dict",
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """Where a message comes from or goes to.

    ``gateway`` is the *instance* name of a configured gateway (``telegram``,
    ``tg_ops``, ``webhook``) or ``"mesh"`` for a mesh. ``chat`` is the
    platform-native id as a string (Telegram chat id, Slack channel id,
    ``whatsapp:+E164``, webhook binding name). For the mesh, ``chat`` is
    ``"<mesh>:#<topic name>"``, ``"<mesh>:@<pubkey>"`` (direct message) or
    ``"<mesh>:tag:<tag>"`` (fan-out to tagged peers). ``thread`` is an optional
    sub-conversation (Telegram forum topic id, Slack ``thread_ts``).
    """

    gateway: str
    chat: str
    thread: str | None = None

    def __str__(self) -> str:
        return f"{self.gateway}/{self.chat}" + (f"/{self.thread}" if self.thread else "")

    @property
    def key(self) -> str:
        """The destination key: one ordered delivery lane and one rate/backoff scope."""
        return str(self)


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    name: str
    content_type: str = "application/octet-stream"
    size: int | None = None
    url: str | None = None  # where the core (never a plugin of another platform) may fetch it
    caption: str = ""
    data: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """Short text for destinations that accept no files."""
        kb = f", {_human_size(self.size)}" if self.size else ""
        cap = f": {self.caption}" if self.caption else ""
        return f"[{self.content_type.split('/')[0]} {self.name}{kb}]{cap}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A message as the core sees it: plaintext, normalised, with provenance.

    ``id`` is stable and idempotent (``telegram:<bot>:<chat>:<message_id>``,
    ``slack:<team>:<event_id>``, ``mesh:<mesh>:<topic message id>``): the inbox
    ledger deduplicates on it, so a redelivered update is processed once.
    ``native_id`` is the platform's own id of this message in its chat (used
    to map replies and edits); ``reply_to`` is the *native* id of the message
    it answers, in the same origin chat; ``edit_of`` the native id it edits.
    """

    id: str
    origin: Address
    sender: str  # human-readable display name
    sender_id: str = ""  # platform-native sender id (allow/deny lists)
    text: str = ""
    native_id: str | None = None
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = None
    edit_of: str | None = None
    deleted: bool = False
    tags: frozenset[str] = frozenset()
    hops: int = 0  # +1 per mesh crossing; dropped above the hop limit
    visited: tuple[str, ...] = ()  # mesh ids this message has been posted to
    is_command: bool = False
    created: datetime = dataclasses.field(default_factory=_utcnow)
    raw: Mapping[str, Any] = dataclasses.field(default_factory=_empty, repr=False, compare=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a gateway can render, so the core can adapt what it sends."""

    max_text: int = 4000  # characters per part
    max_parts: int = 10  # cap on split parts; the rest is truncated with a marker
    threads: bool = False
    replies: bool = False
    edits: bool = False
    deletes: bool = False
    media: bool = False
    max_media_bytes: int = 0
    max_files: int = 10  # files handed over with one message; the core describes the rest
    #: the gateway sends its *own* file references again without their bytes (Telegram's file_id);
    #: otherwise the core fetches them, as another platform's, within its byte budget and caps
    reuses_own_files: bool = False
    formatting: str = "plain"  # plain | html | mrkdwn | whatsapp | markdown


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Outbound:
    """One unit of work handed to ``Gateway.send``.

    ``text`` is already rendered (attribution, escaping per ``render_text``,
    mention neutralising) and split: one Outbound is one part. ``reply_to`` /
    ``edit_of`` are native ids *on this destination*, resolved by the core
    through the message map. ``options`` are the binding's gateway-specific
    options (validated by ``Gateway.BindingOptions``). ``idempotency_key`` is
    stable across retries of the same part.
    """

    message: Message
    to: Address
    text: str
    part: int = 1
    parts: int = 1
    reply_to: str | None = None
    edit_of: str | None = None
    attachments: tuple[Attachment, ...] = ()
    options: Mapping[str, Any] = dataclasses.field(default_factory=_empty)
    idempotency_key: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    """What a successful send produced: the native id(s) on the destination."""

    native_ids: tuple[str, ...] = ()
    thread: str | None = None


# -- (de)serialisation for the durable store -----------------------------------------------

def address_to_dict(a: Address) -> dict[str, Any]:
    return {"gateway": a.gateway, "chat": a.chat, "thread": a.thread}


def address_from_dict(d: Mapping[str, Any]) -> Address:
    return Address(d["gateway"], d["chat"], d.get("thread"))


def message_to_dict(m: Message) -> dict[str, Any]:
    """JSON-safe dict of ``m``; ``raw`` and attachment bytes are not persisted."""
    return {
        "id": m.id, "origin": address_to_dict(m.origin), "sender": m.sender, "sender_id": m.sender_id,
        "text": m.text, "native_id": m.native_id, "reply_to": m.reply_to, "edit_of": m.edit_of,
        "deleted": m.deleted, "tags": sorted(m.tags), "hops": m.hops, "visited": list(m.visited),
        "is_command": m.is_command, "created": m.created.isoformat(),
        "attachments": [
            {"name": a.name, "content_type": a.content_type, "size": a.size, "url": a.url, "caption": a.caption}
            for a in m.attachments
        ],
    }


def message_from_dict(d: Mapping[str, Any], *, raw: Mapping[str, Any] | None = None) -> Message:
    """The Message of ``message_to_dict`` output; ``raw`` (never persisted) can be given along."""
    return Message(
        id=d["id"], origin=address_from_dict(d["origin"]), sender=d.get("sender", ""),
        sender_id=d.get("sender_id", ""), text=d.get("text", ""), native_id=d.get("native_id"),
        reply_to=d.get("reply_to"), edit_of=d.get("edit_of"), deleted=d.get("deleted", False),
        tags=frozenset(d.get("tags", ())), hops=d.get("hops", 0), visited=tuple(d.get("visited", ())),
        is_command=d.get("is_command", False), created=datetime.fromisoformat(d["created"]),
        attachments=tuple(Attachment(**a) for a in d.get("attachments", ())),
        **({} if raw is None else {"raw": raw}),
    )
