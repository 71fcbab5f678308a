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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TraceEvent:
    """One step of one message's journey (``core.trace`` records them; ``Store.trace_write`` keeps them).

    ``detail`` is small JSON (never a message body). ``native_ids`` are indexed so ``trace_resolve``
    finds the message by any platform's id. ``summary`` sets per-message columns of the summary row
    (keys: ``origin``, ``sender``, ``routes``, ``lanes``, ``dropped``; a value is written when the row
    has none yet, except ``dropped`` which always wins), ``counts`` adds to its counters (keys:
    ``dests``, ``delivered``, ``failed``, ``dead``; ``dead`` never goes below 0).
    """

    message_id: str
    step: str  # received | duplicate | dropped | queued | delivered | failed | dead_letter | dlq_retry | dlq_drop
    ts: float
    outbox_id: int | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    native_ids: tuple[str, ...] = ()
    summary: dict[str, str] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


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

    # -- message trace (core.trace) ---------------------------------------------------------------------
    # Diagnostics, never needed for delivery. Kept ``[retention] trace_days`` (``prune("trace", ...)``
    # deletes older events, index rows and summaries). Never holds message text.
    async def trace_write(self, events: Sequence[TraceEvent]) -> None:
        """Append ``events`` (their native-id index rows and summary updates) in ONE write that
        shares the group commit with whatever else is queued."""

    async def trace_get(self, message_id: str) -> dict[str, Any] | None:
        """``{"summary": {...}, "events": [...]}`` for ``message_id`` (events oldest first), or None.
        summary: message_id, first_at, last_at, origin, sender, routes (list), lanes (list), dropped,
        dests, delivered, failed, dead, status (dropped|received|dead_letter|delivered|retrying|queued),
        and (here only) events_truncated: the message stopped adding events at a size bound (64 KiB of
        event lines in SQLite) while its counters go on. event: id, ts, step, outbox_id, detail."""

    async def trace_resolve(self, key: str, limit: int = 20) -> list[str]:
        """Message ids ``key`` names, newest first: a message id, a native id of any platform (the
        source's or a delivered copy's), or an outbox / dead-letter id (digits: an item still queued or
        dead, or one with a failed attempt, a dead letter or a dlq action in its trace)."""

    async def trace_search(self, *, q: str | None = None, route: str | None = None, chat: str | None = None,
                           sender: str | None = None, status: str | None = None, since: float | None = None,
                           until: float | None = None, limit: int = 50,
                           also: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Summaries (as in ``trace_get``), newest ``last_at`` first. ``q``: an id as ``trace_resolve``
        takes it; ``route``: one of its routes; ``chat``: a substring of its origin or a lane;
        ``sender``: exact sender; ``since``/``until``: ``last_at`` bounds (epoch seconds); ``also``:
        message ids that match ``q`` besides those it names (the admin API's text matches)."""

    # -- retention (core/store/retention.py decides what goes; a backend deletes in short writes) -------
    async def prune(self, table: str, before: float, limit: int) -> int:
        """Delete at most ``limit`` rows of ``table`` whose age is < ``before`` (epoch seconds),
        oldest first, in one short write; the count. Tables and their age: ``inbox`` (first seen),
        ``message_map`` (last used: ``map_put`` or ``map_touch``), ``audit`` (ts), ``dead_letters``
        (failed_at), ``trace`` (a message's last event; counts messages, their index rows go too).
        ValueError for another table."""

    async def prune_excess(self, table: str, keep: int, limit: int) -> int:
        """Delete at most ``limit`` of the oldest rows of ``table`` (``dead_letters``) beyond the
        newest ``keep``, in one short write; the count."""

    async def map_touch(self, origin_ids: str | Sequence[str]) -> None:
        """A reply or edit was resolved through the map rows of ``origin_ids`` (every lane): they
        count as used now, so their reply window starts again."""

    async def compact(self, *, vacuum: bool = True) -> dict[str, Any]:
        """After a pruning pass: give free space back (``vacuum``) and trim the journal. May be a
        no-op for a backend that does this itself."""
