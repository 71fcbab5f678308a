"""Mesh addresses, the vocabulary routing and delivery share: the ``mesh`` pseudo-gateway, the
``chat`` syntax of a mesh destination (``"<mesh>:#<topic>"``, ``"<mesh>:tag:<tag>"``,
``"<mesh>:@<peer>"``), tag names, and which mesh an address lies on.

It sits in delivery (below routing): delivery sends to these addresses, routing resolves routes
into them.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..messages import Address

__all__ = [
    "MESH_GATEWAY",
    "PUBKEY_RE",
    "TAG_RE",
    "MeshChat",
    "mesh_of",
    "normalise_tag",
    "origin_labels",
    "parse_mesh_chat",
]

log = logging.getLogger(__name__)

MESH_GATEWAY = "mesh"
#: a tag name: starts with a letter or digit; letters, digits and ``: _ . / -`` after that
TAG_RE = re.compile(r"[a-z0-9][a-z0-9:_./\-]{0,63}")
#: a member or session public key (hex)
PUBKEY_RE = re.compile(r"[0-9a-fA-F]{64}")


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


@functools.lru_cache(maxsize=4096)  # called per message by the loop guard; MeshChat is frozen
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
        return MeshChat(mesh=mesh, kind="peer", value=peer.lower() if PUBKEY_RE.fullmatch(peer) else peer)
    raise ValueError(f"{chat!r}: mesh address must be '<mesh>:#<topic>', '<mesh>:tag:<tag>' or '<mesh>:@<peer>'")


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
