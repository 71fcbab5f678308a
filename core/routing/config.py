"""``[[routes]]``: which mesh topics and tags map to which chats, and under what rules.

A route is a *room*: its mesh topic (optional) and its bindings (chats on
gateways, or mesh addresses) exchange messages according to ``direction``:

- ``"out"``  mesh -> platform: the topic is a source, the bindings are destinations;
- ``"in"``   platform -> mesh: the bindings are sources, the topic is a destination;
- ``"both"`` (default) both ways, and bindings also relay to each other.

A binding may override the route's direction for itself. A route with
``tags`` also matches every message carrying one of those tags, whatever its
source, and delivers it to the route's destinations.

Mesh addresses as bindings use ``gateway = "mesh"`` and ``chat`` one of
``"<mesh>:#<topic>"``, ``"<mesh>:tag:<tag>"`` or ``"<mesh>:@<peer name or pubkey>"``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..confcheck import check_format_template

if TYPE_CHECKING:
    from ..messages import Address

__all__ = [
    "ATTRIBUTION_FIELDS",
    "MESH_GATEWAY",
    "TAG_RE",
    "BindingConfig",
    "Direction",
    "MeshChat",
    "RouteConfig",
    "mesh_of",
    "normalise_tag",
    "origin_labels",
    "parse_mesh_chat",
]

log = logging.getLogger(__name__)

Direction = Literal["in", "out", "both"]

MESH_GATEWAY = "mesh"
#: fields an attribution template may use. ``mesh``/``topic`` are the route's; ``origin_mesh`` is the
#: mesh the message was written on (else the route's mesh); ``origin`` a label of where it came
#: from ("mesh b", or a platform gateway's instance name such as "telegram")
ATTRIBUTION_FIELDS = frozenset({"sender", "text", "gateway", "chat", "mesh", "topic", "origin_mesh", "origin"})
#: a tag name: starts with a letter or digit; letters, digits and ``: _ . / -`` after that
TAG_RE = re.compile(r"[a-z0-9][a-z0-9:_./\-]{0,63}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_PUBKEY_RE = re.compile(r"[0-9a-fA-F]{64}")


def normalise_tag(value: str) -> str:
    """Lower-cased tag; raises ValueError when it is not a valid tag name."""
    tag = value.strip().lower()
    tag = tag.removeprefix("tag:")
    if not TAG_RE.fullmatch(tag):
        raise ValueError(f"{value!r} is not a valid tag (letters, digits and ':_./-', max 64 chars)")
    return tag


class MeshChat(BaseModel):
    """A parsed mesh address ``chat``: kind ``topic`` | ``tag`` | ``peer``."""

    model_config = ConfigDict(frozen=True)

    mesh: str
    kind: Literal["topic", "tag", "peer"]
    value: str  # topic name, tag, or peer name/pubkey


def parse_mesh_chat(chat: str) -> MeshChat:
    """Parse ``"<mesh>:#<topic>"`` / ``"<mesh>:tag:<tag>"`` / ``"<mesh>:@<peer>"``. ValueError if malformed."""
    mesh, sep, rest = chat.partition(":")
    if not sep or not mesh or not rest:
        raise ValueError(f"{chat!r}: mesh address must be '<mesh>:#<topic>', '<mesh>:tag:<tag>' or '<mesh>:@<peer>'")
    if rest.startswith("#") and len(rest) > 1:
        return MeshChat(mesh=mesh, kind="topic", value=rest[1:])
    if rest.startswith("tag:"):
        return MeshChat(mesh=mesh, kind="tag", value=normalise_tag(rest[4:]))
    if rest.startswith("@") and len(rest) > 1:
        peer = rest[1:]
        return MeshChat(mesh=mesh, kind="peer", value=peer.lower() if _PUBKEY_RE.fullmatch(peer) else peer)
    raise ValueError(f"{chat!r}: mesh address must be '<mesh>:#<topic>', '<mesh>:tag:<tag>' or '<mesh>:@<peer>'")


def _check_template(template: str) -> str:
    check_format_template(template, ATTRIBUTION_FIELDS, required=("text",))
    return template


def _tags(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        t = normalise_tag(v)
        if t not in out:
            out.append(t)
    return out


class BindingConfig(BaseModel):
    """One chat of a route: ``{gateway, chat, thread?, tags, options, direction?, allow, deny}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    gateway: str = Field(min_length=1)  # gateway instance name, or "mesh"
    chat: str = Field(min_length=1)  # platform chat id / webhook binding name / mesh address
    thread: str | None = None
    tags: list[str] = []  # static tags given to every message from this chat
    options: dict[str, Any] = {}  # validated by the gateway's BindingOptions
    direction: Direction | None = None  # default: the route's direction
    allow: list[str] = []  # external sender ids allowed from this chat (empty: the route's list)
    deny: list[str] = []

    @field_validator("chat", "gateway", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):  # Telegram chat ids written as numbers
            return str(v)
        return v.strip() if isinstance(v, str) else v

    @field_validator("thread", mode="before")
    @classmethod
    def _thread(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("tags")
    @classmethod
    def _norm_tags(cls, v: list[str]) -> list[str]:
        return _tags(v)

    @model_validator(mode="after")
    def _mesh_address(self) -> BindingConfig:
        if self.gateway == MESH_GATEWAY:
            parse_mesh_chat(self.chat)  # raises ValueError with the expected forms
            if self.options:
                raise ValueError("options: mesh destinations take no options")
        return self

    @property
    def mesh_chat(self) -> MeshChat | None:
        return parse_mesh_chat(self.chat) if self.gateway == MESH_GATEWAY else None


class RouteConfig(BaseModel):
    """One ``[[routes]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    mesh: str | None = None  # mesh config name ([mesh.<name>]); required with topic
    topic: str | None = None  # mesh topic name
    tags: list[str] = []  # match messages carrying any of these tags, from any source
    direction: Direction = "both"
    #: "{sender}: {text}" by default; fields {sender} {text} {gateway} {chat} {mesh} {topic}
    #: {origin_mesh} {origin}
    attribution: str | None = None
    allow: list[str] = []  # external sender ids (platform user ids) allowed; empty = everyone
    deny: list[str] = []
    mesh_allow: list[str] = []  # mesh senders allowed (display names or pubkeys); empty = everyone
    mesh_deny: list[str] = []
    encryption: Literal["auto", "hkdf", "plaintext"] = "auto"  # for this route's topic (only if set explicitly)
    allow_mass_mentions: bool = False  # @everyone/@channel/@here/<!channel> pass through untouched
    notify_failures: bool = False  # a permanent delivery failure DMs a short notice to the mesh sender
    max_hops: int = Field(2, ge=1, le=8)  # mesh->mesh relays of this route stop after this many crossings
    binds: list[BindingConfig] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError("must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit)")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().removeprefix("#")
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("tags")
    @classmethod
    def _norm_tags(cls, v: list[str]) -> list[str]:
        return _tags(v)

    @field_validator("attribution")
    @classmethod
    def _attribution(cls, v: str | None) -> str | None:
        return None if v is None else _check_template(v)

    @field_validator("mesh_allow", "mesh_deny")
    @classmethod
    def _mesh_senders(cls, v: list[str]) -> list[str]:
        return [s.lower() if _PUBKEY_RE.fullmatch(s) else s for s in v]

    @model_validator(mode="after")
    def _shape(self) -> RouteConfig:
        if self.topic is not None and self.mesh is None:
            raise ValueError("topic needs mesh (the [mesh.<name>] it lives on)")
        if self.topic is None and not self.tags and not self.binds:
            raise ValueError("a route needs a topic, tags or binds")
        return self


def mesh_of(runtime: Any, address: Address) -> str | None:
    """The mesh ``address`` lies on: a ``mesh`` address, or a bridge gateway's (``Gateway.mesh_of``)."""
    if address.gateway == MESH_GATEWAY:
        return parse_mesh_chat(address.chat).mesh
    gateway = runtime.gateways.get(address.gateway) if runtime is not None else None
    return gateway.mesh_of(address) if gateway is not None else None


def origin_labels(runtime: Any, origin: Address, route_mesh: str | None) -> tuple[str, str]:
    """``(origin_mesh, origin)`` for attribution templates.

    ``origin_mesh``: the mesh the message was written on (a mesh topic or DM, or a bridge's far
    mesh, by :func:`mesh_of`); for a message from a platform chat, the route's mesh (the mesh of
    the room it entered); without either, the origin gateway's instance name.
    ``origin``: ``"mesh <name>"`` for a message written on a mesh, else the origin gateway's
    instance name (``"telegram"``, ``"hooks"``...).
    """
    try:
        written_on = mesh_of(runtime, origin)
    except Exception:  # a plugin's mesh_of must not break rendering
        log.debug("mesh_of(%s) failed", origin, exc_info=True)
        written_on = None
    if written_on:
        return written_on, f"mesh {written_on}"
    return route_mesh or origin.gateway, origin.gateway
