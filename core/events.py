"""Typed events for the ``track_event`` observer hook (audit, metrics, alerts)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar

from .messages import Address, Message

__all__ = [
    "DeliveryFailed",
    "DeliveryStatus",
    "Event",
    "GatewayState",
    "GatewayStateChanged",
    "MessageDelivered",
    "MessageDropped",
    "MessageQueued",
    "MessageReceived",
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class GatewayState(StrEnum):
    STARTING = "starting"
    CONNECTED = "connected"
    TRANSIENT_DISCONNECT = "transient_disconnect"
    BAD_CREDENTIALS = "bad_credentials"
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    name: ClassVar[str] = "event"
    created: datetime = dataclasses.field(default_factory=_utcnow)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived(Event):
    name: ClassVar[str] = "message-received"
    message: Message


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MessageDropped(Event):
    name: ClassVar[str] = "message-dropped"
    message: Message
    reason: str  # duplicate | denied | loop | hop_limit | no_route | undecryptable | ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _ToDestination(Event):
    """The fields of the events about one message to one destination (queued, delivered, failed)."""

    message: Message
    to: Address
    route: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MessageQueued(_ToDestination):
    name: ClassVar[str] = "message-queued"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MessageDelivered(_ToDestination):
    name: ClassVar[str] = "message-delivered"
    native_ids: tuple[str, ...] = ()
    latency_s: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryFailed(_ToDestination):
    name: ClassVar[str] = "delivery-failed"
    error: str
    permanent: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryStatus(Event):
    """A vendor's later word on a delivered message (Twilio status callbacks)."""

    name: ClassVar[str] = "delivery-status"
    gateway: str
    native_id: str
    status: str  # queued | sent | delivered | read | failed | undelivered
    error: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GatewayStateChanged(Event):
    name: ClassVar[str] = "gateway-state-changed"
    gateway: str
    state: GatewayState
    detail: str = ""
