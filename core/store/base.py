"""The store interface. SQLite (default) implements it; a PostgreSQL backend can later.

Rules every backend keeps:
- ``accept`` is ONE transaction: inbox ledger insert + all outbox rows. It returns
  False (and writes nothing) when the message id is already in the ledger.
- Callers acknowledge their source only after ``accept`` (or ``kv_set`` for a
  cursor) has returned: the write is committed by then.
- Outbox rows of one lane (destination key) are handed out in insertion order,
  and at most one claim per lane is live at a time, so per-chat order holds.
- Keys are never written to the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutboxItem:
    """One message to one destination. ``message`` is ``messages.message_to_dict`` output."""

    lane: str  # Address.key of the destination: ordering + rate/backoff scope
    route: str
    destination: dict[str, Any]  # {"gateway", "chat", "thread"}
    message: dict[str, Any]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # binding options / attribution etc.
    id: int = 0  # assigned by the store
    attempts: int = 0
    not_before: float = 0.0  # epoch seconds
    progress: int = 0  # parts already sent (a crash mid-split resumes at the next part)
    last_error: str = ""
    enqueued_at: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    id: int
    item: OutboxItem
    reason: str
    failed_at: float


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # -- inbox ledger + outbox, atomically --------------------------------------------------
    async def accept(self, message_id: str, items: Sequence[OutboxItem]) -> bool:
        """Record ``message_id`` in the inbox ledger and enqueue ``items`` in one commit.
        False if the id was already recorded (nothing is written)."""

    async def seen(self, message_id: str) -> bool: ...

    # -- outbox -------------------------------------------------------------------------------
    async def ready_lanes(self, now: float) -> list[str]:
        """Lanes with at least one item whose ``not_before`` <= now."""

    async def head(self, lane: str) -> OutboxItem | None:
        """The oldest item of ``lane`` (regardless of not_before), or None."""

    async def progress(self, item_id: int, parts_done: int) -> None: ...

    async def complete(self, item_id: int) -> None:
        """Remove a delivered item."""

    async def reschedule(self, item_id: int, *, not_before: float, attempts: int, error: str) -> None: ...

    async def dead_letter(self, item_id: int, reason: str) -> None:
        """Move an item to dead letters (one commit)."""

    async def outbox_depths(self) -> dict[str, tuple[int, float]]:
        """lane -> (queued count, enqueued_at of the oldest)."""

    # -- dead letters -----------------------------------------------------------------------------
    async def dlq_list(self, limit: int = 100) -> list[DeadLetter]: ...
    async def dlq_retry(self, ids: Sequence[int] | None = None) -> int:
        """Move dead letters back to the outbox (all when ids is None). Returns the count."""
    async def dlq_drop(self, ids: Sequence[int] | None = None) -> int: ...
    async def dlq_count(self) -> int: ...

    # -- message map --------------------------------------------------------------------------------
    async def map_put(self, origin_id: str, lane: str, native_ids: Sequence[str]) -> None:
        """Remember that ``origin_id`` was delivered to ``lane`` as ``native_ids``."""

    async def map_get(self, origin_id: str, lane: str) -> list[str]: ...

    async def map_reverse(self, lane_prefix: str, native_id: str) -> str | None:
        """The origin message id whose copy in a lane starting with ``lane_prefix`` has ``native_id``."""

    # -- small JSON state: cursors, offsets, session identity, registries ------------------------------
    async def kv_get(self, namespace: str, key: str) -> Any | None: ...
    async def kv_set(self, namespace: str, key: str, value: Any) -> None: ...
    async def kv_delete(self, namespace: str, key: str) -> None: ...
    async def kv_items(self, namespace: str) -> dict[str, Any]: ...

    # -- audit ------------------------------------------------------------------------------------------
    async def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None: ...
    async def audit_list(self, limit: int = 100) -> list[dict[str, Any]]: ...

    # -- retention (core/store/retention.py decides what goes; a backend deletes in short writes) -------
    async def prune(self, table: str, before: float, limit: int) -> int:
        """Delete at most ``limit`` rows of ``table`` whose age is < ``before`` (epoch seconds),
        oldest first, in one short write; the count. Tables and their age: ``inbox`` (first seen),
        ``message_map`` (last used: ``map_put`` or ``map_touch``), ``audit`` (ts), ``dead_letters``
        (failed_at). ValueError for another table."""

    async def prune_excess(self, table: str, keep: int, limit: int) -> int:
        """Delete at most ``limit`` of the oldest rows of ``table`` (``dead_letters``) beyond the
        newest ``keep``, in one short write; the count."""

    async def map_touch(self, origin_ids: str | Sequence[str]) -> None:
        """A reply or edit was resolved through the map rows of ``origin_ids`` (every lane): they
        count as used now, so their reply window starts again."""

    async def compact(self, *, vacuum: bool = True) -> dict[str, Any]:
        """After a pruning pass: give free space back (``vacuum``) and trim the journal. May be a
        no-op for a backend that does this itself."""
