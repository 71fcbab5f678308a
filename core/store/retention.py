"""Retention: the ``[retention]`` table and the pruning pass every store backend runs.

What is kept, and why (the policy lives here; a backend only deletes what it is told to):

* **inbox ledger** (dedup): ``inbox_days`` since a message id was first seen, at least 8 days.
  The longest redelivery window of any source: the broker keeps an undelivered queue row (a DM
  or push the gateway handled but had not acknowledged before an outage) for 7 days
  (``purge_age_s``); Telegram keeps updates 24 h; Slack retries events within ~5 min and the
  history catch-up reads at most 24 h back; Twilio retries within minutes. The topic poller's
  own window (2,000 row ids per topic, in the kv table, kept for good) stops redelivery of older
  topic rows; the ledger only has to catch rows replayed after a crash (seconds).
* **message map** (replies, edits): ``reply_window_days`` since the message was delivered *or
  last resolved for a reply or an edit* (``map_touch``), so an active thread stays threaded.
* **audit log**: ``audit_days``.
* **message trace** (diagnostics: ``claudemesh-gateway trace``, the dashboard): ``trace_days``
  since a message's last trace event; its summary, events and index rows go together.
  ``[trace] retention_days`` is an alias (used when ``trace_days`` is not set).
* **dead letters**: ``dead_letter_days`` since they failed, and at most ``dead_letter_max``
  (the oldest beyond it go first).
* **outbox**: never pruned. Delivered rows are deleted when delivered (no retention needed);
  undelivered rows leave only by delivery or dead-lettering (``[delivery] max_age``).
* **kv** (cursors, identity, registries): never pruned.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DAY", "MIN_INBOX_DAYS", "RetentionConfig", "prune_pass"]

log = logging.getLogger(__name__)

DAY = 86400.0
MIN_INBOX_DAYS = 8.0  # > the broker's 7-day queue retention (see the module docstring)


class RetentionConfig(BaseModel):
    """The ``[retention]`` table. Durations in days (fractions allowed), intervals in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    inbox_days: float = Field(10.0, ge=MIN_INBOX_DAYS)  # dedup ledger
    reply_window_days: float = Field(30.0, gt=0)  # message map: since delivery or the last reply/edit to it
    audit_days: float = Field(90.0, gt=0)
    dead_letter_days: float = Field(30.0, gt=0)
    dead_letter_max: int = Field(100_000, ge=0)  # 0: no cap
    trace_days: float = Field(7.0, gt=0, le=3650)  # message trace: since a message's last event ([trace] retention_days)
    interval_s: float = Field(60.0, ge=0)  # between pruning passes; 0: no background pruning
    batch: int = Field(500, ge=1, le=100_000)  # rows per delete: one short write through the writer
    vacuum: bool = True  # after a pass, give freed pages back to the file system (SQLite: incremental_vacuum)

    def cutoffs(self, now: float) -> dict[str, float]:
        """table -> rows whose age timestamp is older than this are pruned."""
        return {
            "inbox": now - self.inbox_days * DAY,
            "message_map": now - self.reply_window_days * DAY,
            "audit": now - self.audit_days * DAY,
            "dead_letters": now - self.dead_letter_days * DAY,
            "trace": now - self.trace_days * DAY,
        }

    def caps(self) -> dict[str, int]:
        """table -> most rows kept (0: no cap)."""
        return {"dead_letters": self.dead_letter_max}


class Prunable(Protocol):
    """What :func:`prune_pass` needs of a store (see ``Store`` in base.py)."""

    async def prune(self, table: str, before: float, limit: int) -> int: ...
    async def prune_excess(self, table: str, keep: int, limit: int) -> int: ...
    async def compact(self, *, vacuum: bool = True) -> dict[str, Any]: ...


async def prune_pass(store: Prunable, cfg: RetentionConfig, now: float) -> dict[str, int]:
    """One pruning pass: every table down to its window (and cap), ``cfg.batch`` rows per write.

    Each batch is its own short write, awaited before the next is queued, so a pass never holds
    the writer for longer than one batch: other writes share the commits in between.
    """
    counts: dict[str, int] = {}
    for table, before in cfg.cutoffs(now).items():
        counts[table] = await _drain(lambda t=table, b=before: store.prune(t, b, cfg.batch), cfg.batch)
    for table, keep in cfg.caps().items():
        if keep > 0:
            over = await _drain(lambda t=table, k=keep: store.prune_excess(t, k, cfg.batch), cfg.batch)
            counts[table] = counts.get(table, 0) + over
            if over:
                log.warning("store prune: dropped the %d oldest %s beyond the cap of %d", over, table, keep)
    if any(counts.values()):
        log.info("store prune: %s", counts)
    await store.compact(vacuum=cfg.vacuum)
    return counts


async def _drain(step: Any, batch: int) -> int:
    total = 0
    while True:
        n = await step()
        total += n
        if n < batch:
            return total
        await asyncio.sleep(0)  # let whatever waits on the loop queue its writes between batches
