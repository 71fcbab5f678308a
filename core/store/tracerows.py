"""The message trace's row shapes, shared by both store backends (same summaries, same statuses,
same event lines): how a batch of :class:`~.base.TraceEvent` becomes one summary upsert per message
plus key-index rows, and how a stored row reads back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import TraceEvent
from .jsonio import dumps, loads

__all__ = ["COUNT_COLS", "SUMMARY_COLS", "TRACE_EVENTS_MAX", "merge_events", "resolve_keys", "trace_document",
           "trace_status", "trace_summary"]

SUMMARY_COLS = ("origin", "sender", "routes", "lanes")
COUNT_COLS = ("dests", "delivered", "failed", "dead")
TRACE_EVENTS_MAX = 64 * 1024  # characters of event lines kept per message


def merge_events(events: Sequence[TraceEvent]) -> tuple[list[list[Any]], list[tuple[str, str]]]:
    """One upsert row per message (message_id, first_at, last_at, origin, sender, routes, lanes,
    dropped, dests, delivered, failed, dead, event lines, key lines) and the (key, message_id) index
    rows, for the events of one ``trace_write``."""
    merged: dict[str, list[Any]] = {}
    keys: list[tuple[str, str]] = []
    for e in events:
        line = dumps([e.ts, e.step, e.outbox_id, e.detail]) + "\n"
        row = merged.get(e.message_id)
        if row is None:
            row = merged[e.message_id] = [e.message_id, e.ts, e.ts, None, None, None, None, None, 0, 0, 0, 0, "", ""]
        else:
            row[1], row[2] = min(row[1], e.ts), max(row[2], e.ts)
        summary, counts = e.summary, e.counts
        if summary:
            for i, k in enumerate(SUMMARY_COLS, start=3):
                v = summary.get(k)
                if v is not None and row[i] is None:
                    row[i] = " ".join(v) if isinstance(v, (list, tuple)) else v
            if summary.get("dropped"):
                row[7] = summary["dropped"]
        if counts:
            for i, k in enumerate(COUNT_COLS, start=8):
                row[i] += counts.get(k, 0)
        row[12] += line
        new = [str(n) for n in e.native_ids if n and "\n" not in str(n)]
        if e.outbox_id is not None and e.step != "delivered":
            # "#<id>" for the items logs name (failures, dead letters); an item delivered at the first
            # try is found through its message (and while queued, through the outbox itself)
            new.append(f"#{e.outbox_id}")
        for k in new:
            keys.append((k, e.message_id))
            row[13] += k + "\n"
    return list(merged.values()), keys


def resolve_keys(key: str) -> tuple[list[str], int | None]:
    """The index keys ``key`` may be stored under, and the outbox / dead-letter id it may be."""
    if key.isascii() and key.isdigit() and len(key) < 19:
        return [key, f"#{int(key)}"], int(key)
    return [key], None


def trace_status(dropped: str | None, dests: int, delivered: int, failed: int, dead: int) -> str:
    if dropped:
        return "dropped"
    if dests <= 0:
        return "received"
    if dead > 0:
        return "dead_letter"
    if delivered >= dests:
        return "delivered"
    return "retrying" if failed > 0 else "queued"


def trace_summary(r: Sequence[Any]) -> dict[str, Any]:
    """A summary dict from (message_id, first_at, last_at, origin, sender, routes, lanes, dropped,
    dests, delivered, failed, dead)."""
    return {
        "message_id": r[0], "first_at": r[1], "last_at": r[2], "origin": r[3], "sender": r[4],
        "routes": r[5].split(" ") if r[5] else [], "lanes": r[6].split(" ") if r[6] else [], "dropped": r[7],
        "dests": r[8], "delivered": r[9], "failed": r[10], "dead": r[11],
        "status": trace_status(r[7], r[8], r[9], r[10], r[11]),
    }


def trace_document(r: Sequence[Any]) -> dict[str, Any]:
    """``trace_get``'s answer from a summary row followed by its event lines (column 12)."""
    events = []
    for n, line in enumerate(x for x in r[12].split("\n") if x):
        ts, step, oid, detail = loads(line)
        events.append({"id": n + 1, "ts": ts, "step": step, "outbox_id": oid, "detail": detail})
    events.sort(key=lambda e: (e["ts"], e["id"]))  # stable: recorded order within one instant
    summary = trace_summary(r)
    # a message retried for hours (429 storms) stops adding event lines at 64 KiB; counters go on
    summary["events_truncated"] = len(r[12]) >= TRACE_EVENTS_MAX
    return {"summary": summary, "events": events}
