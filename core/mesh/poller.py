"""Topic ingestion by polling ``topic_history`` (A.12): topic posts are never pushed live.

The cursor is a window of row ids, not a timestamp
----------------------------------------------------

``topic_history`` returns rows newest first, ordered by the broker's ``created_at`` (then id),
and row ids are opaque. ``createdAt`` is the broker's wall clock at insert time, so it can be
wrong: a broker whose clock ran fast dates rows in the future, and after the clock is put
right, later rows sort *below* them; a row dated 2100 stays on top for good. A cursor of
"newest ``createdAt`` seen" (what this module used to keep) takes every later row for an old
one. So no timestamp ever decides whether a row is new. Instead, per topic, the kv keeps:

``seen``
    The ids of the top of the history as we last read it, **in history order** (newest
    first), at most :data:`SEEN_LIMIT`. Every read starts at the top and pages down
    contiguously, so ``seen`` is always a prefix of the history as it was, and it is only
    ever shortened from the bottom. Its last id is the *bottom* of the window.
``complete``
    ``seen`` held the whole history when it was last read (a topic shorter than
    :data:`SEEN_LIMIT`): nothing older exists, so nothing below the bottom is history.

A row's position among old rows never changes: inserts only add rows (above, between or
below). Positions are the page order the broker sends (``created_at`` DESC, id DESC); a page
that is not newest first is sorted into that order, duplicates on a page count once. Hence the rule, which needs no clock: **a row is new iff its id is not in ``seen`` and
it sits above the bottom of the window** (anywhere, when ``complete``). Everything that
existed above the bottom when we read it is in ``seen``; an unknown id up there can only have
been inserted since, whatever its timestamp says. Rows below the bottom are history we never
tracked (older than the first poll, or truncated out of the window). The window is kept at
least one backfill page (200) deep -- a shallower one (a topic's first run, an old-format
window) is read with a page of 200 and what lies under it recorded as history, as the first
run does -- so a backlog read never reaches below it. If a read does, the rows there are
recorded, skipped, logged at WARNING and counted (``skipped["beyond_window"]``): a broker clock
stepped back further than the window reaches puts new rows there.

How far a poll reads (position, then time as a hint only):

1. The top page (``topic_page_size``, default 50). Every unseen row on it above the bottom
   is new, also when it sits *under* seen rows (a clock stepped back).
2. While the page is full and its last row is unseen, the next page (``beforeId``, limit
   200): the run of new rows may go on (a backlog after downtime). The anchor overlaps the
   page's oldest timestamp, because ``beforeId`` is a strict ``<`` on ``created_at`` and would
   skip rows tied on it; a page that is one timestamp throughout is re-read with limit 200.
3. While the last row read is seen but dated more than :data:`FUTURE_TOLERANCE_MS` after our
   own clock (a block of future-dated rows on top), up to :data:`MAX_FUTURE_PAGES` more pages:
   rows posted after the broker's clock was put right sit under that block. The clock only
   makes us read more; it never makes a row old.
4. Never past the bottom of the window (unless ``complete``), and never more than
   ``topic_max_backfill`` new rows; beyond that the older rows are a gap (logged, counted as
   ``skipped["backfill_cap"]``).

What this does not catch: rows inserted below the part we read while everything we read is
seen and plausibly dated -- a broker clock stepped *back* (below correct time) by more than a
page of posts. Reading the whole window every poll would catch those at 20x the cost.

New rows are handed over oldest first (bottom up, the broker's order), and each one is added
to ``seen`` after the ``on_row`` callback returned, so a crash re-delivers rather than loses.
With an ``on_rows`` callback (the gateway's pipeline) the rows of a poll go over in batches of
:data:`HAND_OVER_BATCH`, each added to ``seen`` after the call for its batch returned.
``seen`` is persisted at most every :data:`SAVE_EVERY` rows and at the end of a poll: rows
handed over again after a crash are dropped by the core's inbox ledger (dedup by row id).

A ``createdAt`` that does not convert (``NaN``, ``1e999``, out of range, garbage) never
blocks the topic: such a row is delivered with ``created_at = 0`` (the core then uses the
receipt time), logged and counted (``bad_timestamps``); nothing here depends on it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import MeshError, MeshTerminalError, StoreUnavailable
from .aio import TaskOwner, wait_event
from .keys import SEALED, UNENCRYPTED
from .state import KV_NAMESPACE
from .types import MeshInbound, Topic, parse_time_ms

__all__ = ["FUTURE_TOLERANCE_MS", "MAX_FUTURE_PAGES", "SEEN_LIMIT", "KeyWait", "TopicPoller"]

log = logging.getLogger(__name__)

SEEN_LIMIT = 2000  # ids kept per topic (the window); larger than any page, so a poll never outruns it
MAX_PAGE = 200  # the broker clamps topic_history limit to 1..200
MAX_ROW_ID_CHARS = 128  # topic_message ids are 32 characters
FUTURE_TOLERANCE_MS = 2000  # a row dated this much after our clock counts as future-dated (read past it)
MAX_FUTURE_PAGES = 5  # pages read past a block of future-dated seen rows, per poll
SAVE_EVERY = 32  # persist the window at least every this many handed-over rows
HAND_OVER_BATCH = 50  # rows handed to ``on_rows`` at once (one round to the store for all of them)
STATE_VERSION = 2


class KeyWait(MeshError):
    """A bodyVersion 2 row arrived and the topic's sealed key is not held yet: the poll stops at
    that row (nothing after it is handed over, the cursor stays) and is retried later."""


class TopicPoller(TaskOwner):
    """Polls one topic. ``include_own`` (tools) also delivers our own member's rows."""

    def __init__(self, peer: Any, topic: Topic, on_row: Callable[[MeshInbound], Awaitable[Any]], *,
                 include_own: bool = False, persist: bool = True, backfill: int | None = None,
                 watch_started_ms: int | None = None,
                 on_rows: Callable[[list[MeshInbound]], Awaitable[Any]] | None = None) -> None:
        self.peer = peer
        self.cfg = peer.cfg
        self.topic = topic
        self.on_row = on_row
        self.on_rows = on_rows  # the rows of a poll at once (up to HAND_OVER_BATCH), instead of on_row each
        self.include_own = include_own
        self.persist = persist
        self.backfill = self.cfg.topic_backfill if backfill is None else backfill
        self.key = f"{peer.name}:topic:{topic.id}"
        self.seen: list[str] = []  # the window: ids in history order, newest first
        self._seen_set: set[str] = set()
        self.complete = False  # ``seen`` was the whole history when last read
        self._ordered = True  # False for a window loaded from the old (timestamp cursor) format
        self.initialized = False
        self.last_poll_at: float | None = None
        self.poll_latency: float | None = None
        self.polls = 0
        self.delivered = 0
        self.echoes = 0
        self.undecryptable = 0
        self.bad_timestamps = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self.clock: Callable[[], float] = time.time  # only to notice future-dated rows (read further)
        self._wake = asyncio.Event()
        self._loaded = False
        self._pending: set[str] = set()
        self._order: list[str] = []
        self._unsaved = 0
        self._shallow = False  # the last read started from a window shallower than a backfill page
        # several replicas: ``await gate(self)`` is True while this replica may poll the topic (a
        # lease); a standby poller polls nothing and reloads the cursor when it takes over
        self.gate: Callable[[TopicPoller], Awaitable[bool]] | None = getattr(peer, "topic_gate", None)
        self.standby = False
        # the first poll delivers every row from here on (see ``MeshPeer.watch_topic``)
        self.watch_started_ms = int(time.time() * 1000) if watch_started_ms is None else watch_started_ms

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._start_task(self.run, f"mesh:{self.peer.name}:poll:{self.topic.name}")

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        interval = self.cfg.topic_poll_interval
        conn = self.peer.connection
        while True:
            try:
                await conn.wait_connected(None)
                if self.gate is not None and not await self.gate(self):
                    self.standby, self._loaded = True, False  # the owner's cursor is the truth on takeover
                    self._wake.clear()
                    await wait_event(self._wake, self.cfg.topic_poll_interval)
                    continue
                self.standby = False
                self._wake.clear()  # a wake while this poll runs polls again at once (it may be news)
                t0 = time.monotonic()
                n = await self.poll_once()
                self.poll_latency = time.monotonic() - t0
                self.last_poll_at = time.time()
                self.polls += 1
                self.last_error = None
                interval = self.cfg.topic_poll_interval if n else min(interval * 2, self.idle_interval())
            except asyncio.CancelledError:
                raise
            except KeyWait as exc:
                if self.last_error != str(exc):
                    log.warning("mesh %s: #%s: %s", self.peer.name, self.topic.name, exc)
                self.last_error = str(exc)
                interval = self.idle_interval()
            except MeshTerminalError as exc:
                if conn.terminal_error is not None:
                    return  # refused for good
                # a clock skew is terminal only until the clock is fixed: keep the poller
                self.last_error = str(exc)
                interval = self.idle_interval()
            except MeshError as exc:
                if conn.state == "stopped":
                    return
                self.last_error = str(exc)
                log.warning("mesh %s: polling #%s failed: %s", self.peer.name, self.topic.name, exc)
                interval = self.cfg.topic_poll_interval
            except StoreUnavailable as exc:  # the store logs its outage (rate-limited): rows are read again
                self.last_error = str(exc)
                interval = self.idle_interval()
            except Exception as exc:  # on_message failed: keep the cursor, retry the same rows later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("mesh %s: handling a #%s row failed; will retry", self.peer.name, self.topic.name)
                interval = self.idle_interval()
            await wait_event(self._wake, interval)

    def idle_interval(self) -> float:
        """The period of a quiet topic: ``topic_poll_idle_interval``, longer when the mesh's topics
        would otherwise need more than ``topic_poll_budget`` requests/s between them."""
        topics = len(getattr(self.peer, "pollers", None) or ()) or 1
        return max(self.cfg.topic_poll_idle_interval, topics / self.cfg.topic_poll_budget)

    # -- the window ----------------------------------------------------------------------------------------------------
    async def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.persist:
            return
        saved = await self.peer.kv.kv_get(KV_NAMESPACE, self.key)
        if not isinstance(saved, dict) or not saved.get("initialized"):
            return
        ids = [str(x) for x in saved.get("seen") or [] if isinstance(x, str | int)]
        if saved.get("v") == STATE_VERSION:
            self._set_window(ids)
            bottom = saved.get("bottom")
            if isinstance(bottom, str) and bottom not in self._seen_set:
                # the bottom row was being handed over: still the bottom, still new
                self._order = [*ids, bottom]
                self._pending = {bottom}
            self.complete = saved.get("complete") is True
        else:
            # the old format: ids in the order they were marked (not history order), next to a
            # timestamp cursor that is no longer used. The first poll rebuilds an ordered window.
            self._set_window(ids)
            self._ordered = False
        self.initialized = True

    def _set_window(self, ids: list[str]) -> None:
        self.seen = list(ids)
        self._seen_set = set(ids)
        self._order = list(ids)
        self._pending = set()

    @property
    def bottom(self) -> str | None:
        """The oldest id of the window (None while the window is unordered or empty)."""
        return self._order[-1] if self._order and self._ordered else None

    async def _save(self, force: bool = True) -> None:
        if not self.persist:
            return
        if not force and self._unsaved < SAVE_EVERY:
            return
        self._unsaved = 0
        self.seen = [i for i in self._order if i not in self._pending] if self._pending else list(self._order)
        await self.peer.kv.kv_set(KV_NAMESPACE, self.key, {
            "v": STATE_VERSION, "seen": self.seen, "bottom": self.bottom, "complete": self.complete,
            "initialized": True, "topic": self.topic.name,
        })

    # -- fetching --------------------------------------------------------------------------------------------------------
    async def _page(self, before: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        frame: dict[str, Any] = {"type": "topic_history", "topic": self.topic.id,
                                 "limit": limit or self.cfg.topic_page_size}
        if before is not None:
            frame["beforeId"] = before
        bucket = getattr(self.peer, "poll_bucket", None)
        if bucket is not None:
            await bucket.acquire()  # the mesh's poll budget, shared by its topics
        reply = await self.peer.connection.request(frame)
        raw = reply.get("messages")
        if not isinstance(raw, list):
            raise MeshError(f"topic_history for #{self.topic.name} returned no messages list")
        rows = []
        ids: set[str] = set()
        for r in raw:
            # topic_message ids are 32 characters; a longer one would pin memory in ``seen`` (and the kv)
            if isinstance(r, dict) and isinstance(r.get("id"), str) and 0 < len(r["id"]) <= MAX_ROW_ID_CHARS:
                if r["id"] not in ids:  # a row twice on one page: the first copy counts
                    ids.add(r["id"])
                    rows.append({**r, "_t": parse_time_ms(r.get("createdAt"))})
            else:
                log.debug("mesh %s: #%s: history entry without a usable id skipped", self.peer.name, self.topic.name)
        dated = [r["_t"] for r in rows if r["_t"] > 0]
        if any(a < b for a, b in itertools.pairwise(dated)):
            # not newest first: the broker's order is created_at DESC, id DESC, so sort by it; rows
            # without a usable createdAt cannot be placed and go on top (new rather than history)
            log.debug("mesh %s: #%s: topic_history page out of order; sorted", self.peer.name, self.topic.name)
            rows.sort(key=lambda r: (r["_t"] if r["_t"] > 0 else float("inf"), r["id"]), reverse=True)
        return rows

    @staticmethod
    def _before(page: list[dict[str, Any]]) -> tuple[str, bool]:
        """The ``beforeId`` for the next older page: the oldest row strictly newer than the page's
        oldest timestamp, so rows tied on that timestamp are re-read. ``False`` if none exists.
        Rows whose ``createdAt`` did not convert (``_t`` 0) are never the anchor."""
        dated = [(i, r) for i, r in enumerate(page) if r["_t"] > 0]
        if dated:
            oldest_t = min(r["_t"] for _, r in dated)
            newer = [(i, r) for i, r in dated if r["_t"] > oldest_t]
            if newer:
                return max(newer, key=lambda x: x[0])[1]["id"], True
        return page[-1]["id"], False

    def _is_seen(self, row_id: str) -> bool:
        return row_id in self._seen_set

    async def _read(self, *, depth: int = 0) -> tuple[list[dict[str, Any]], bool, bool]:
        """Read the history from the top, contiguously: ``(rows newest first, reached the end,
        stopped at topic_max_backfill)``. ``depth``: read at least this many rows (first run).

        A window shallower than a backfill page (the first run, an old-format window) starts
        with the largest page, so a backlog read never overshoots the window's bottom."""
        shallow = not self.complete and len(self._order) < MAX_PAGE
        self._shallow = shallow and not depth
        limit = MAX_PAGE if depth or shallow else self.cfg.topic_page_size
        before: str | None = None
        rows: list[dict[str, Any]] = []
        ids: set[str] = set()
        future_pages = 0
        bottom = None if self.complete else self.bottom
        while True:
            page = await self._page(before, limit)
            base = len(rows)
            fresh = [r for r in page if r["id"] not in ids]
            rows.extend(fresh)
            ids.update(r["id"] for r in fresh)
            if len(page) < limit:
                return rows, True, False
            if not fresh:
                return rows, False, False  # the broker repeats itself: no progress possible
            if depth:
                if len(rows) >= depth:
                    return rows, False, False
            else:
                if bottom is not None and bottom in ids:
                    return rows, False, False  # the bottom of the window: older rows are history
                tail = rows[-1]
                if not self._is_seen(tail["id"]):
                    if not self._ordered and any(self._is_seen(r["id"]) for r in rows):
                        return rows, False, False  # an old-format window: what lies below is unknown
                    unseen = sum(1 for r in rows if not self._is_seen(r["id"]))
                    if unseen >= self.cfg.topic_max_backfill:
                        return rows, False, True
                elif (tail["_t"] > self.clock() * 1000 + FUTURE_TOLERANCE_MS and future_pages < MAX_FUTURE_PAGES
                      and self._inside(rows)):
                    future_pages += 1  # under a block of future-dated rows: later posts may sit below it
                else:
                    return rows, False, False
            anchor, overlapping = self._before(page)
            if not overlapping and limit < MAX_PAGE:
                # the whole page shares one timestamp: re-read this position with the largest page
                del rows[base:]
                ids.difference_update(r["id"] for r in fresh)
                limit = MAX_PAGE
                continue
            if not overlapping:
                log.warning("mesh %s: #%s: %d rows share one timestamp; rows tied on it may be skipped",
                            self.peer.name, self.topic.name, len(page))
            before, limit = anchor, MAX_PAGE  # backfill pages are as large as the broker allows

    def _inside(self, rows: list[dict[str, Any]]) -> bool:
        """The next (largest) page cannot reach the window's bottom: enough of the window is unread."""
        if self.complete:
            return True
        read = sum(1 for r in rows if r["id"] in self._seen_set)
        return len(self._seen_set) - read > MAX_PAGE

    def _classify(self, rows: list[dict[str, Any]], capped: bool) -> tuple[list[dict[str, Any]],
                                                                          list[dict[str, Any]]]:
        """``(new rows, unseen rows below the window)``, both newest first."""
        end = len(rows)  # rows[:end] lie inside the window
        if not self.complete:
            ids = [r["id"] for r in rows]
            if self._ordered:
                bottom = self.bottom
                if bottom is not None and bottom in ids:
                    end = ids.index(bottom) + 1
            else:  # an old-format window has no order: its lowest id on the pages read is the bottom
                known = [i for i, rid in enumerate(ids) if rid in self._seen_set]
                if known:
                    end = known[-1] + 1
        new = [r for r in rows[:end] if not self._is_seen(r["id"])]
        beyond = [r for r in rows[end:] if not self._is_seen(r["id"])]
        if capped or len(new) > self.cfg.topic_max_backfill:
            cap = self.cfg.topic_max_backfill
            over = new[cap:]
            log.warning("mesh %s: #%s: more than %d unseen rows; %d older ones read here and any beyond "
                        "are skipped (gap)", self.peer.name, self.topic.name, cap, len(over))
            self.skipped["backfill_cap"] += len(over)
            new = new[:cap]  # the rest is recorded as seen: the gap stays a gap
        return new, beyond

    def _rebuild(self, rows: list[dict[str, Any]], reached_end: bool, capped: bool,
                 pending: list[dict[str, Any]]) -> None:
        """The new window: the rows read (history order) over the rest of the old window.

        ``pending`` rows are in the window's order but not yet seen (they are being handed over);
        the window is never cut above one of them, so a failed hand-over leaves them new."""
        top = [r["id"] for r in rows]
        if reached_end or capped or not self._ordered:
            order = top  # the whole history, a gap below, or an old-format window: only what we read
        else:
            have = set(top)
            order = top + [i for i in self._order if i not in have]
        if reached_end:
            self.complete = True
        elif capped or not self._ordered:
            self.complete = False
        waiting = {r["id"] for r in pending}
        self._ordered = True
        self._order = order
        self._pending = waiting
        self._seen_set = set(order) - waiting
        self._trim()

    def _trim(self) -> None:
        """Cut the window to SEEN_LIMIT from the bottom, never above a pending row."""
        order = self._order
        if len(order) > SEEN_LIMIT:
            keep = SEEN_LIMIT
            if self._pending:
                keep = max(keep, max(i for i, rid in enumerate(order) if rid in self._pending) + 1)
            if keep < len(order):
                self.complete = False
                self._seen_set.difference_update(order[keep:])
                self._order = order = order[:keep]
        self.seen = [i for i in order if i not in self._pending] if self._pending else list(order)

    # -- one poll ----------------------------------------------------------------------------------------------------------
    async def poll_once(self) -> int:
        """Fetch and hand over new rows; returns how many were handed over (delivered, echoes and
        undecryptable rows alike)."""
        await self._load()
        if not self.initialized:
            return await self._initial()
        rows, reached_end, capped = await self._read()
        new, beyond = self._classify(rows, capped)
        if beyond and self._shallow:
            # the window was shallower than one page: what lies under it is history it never held
            # (the first run, or an old-format window), recorded now as the first run records it
            log.debug("mesh %s: #%s: %d older rows under a shallow window recorded as history",
                      self.peer.name, self.topic.name, len(beyond))
        elif beyond:
            self._skip(beyond)
        self._rebuild(rows, reached_end, capped, new)
        return await self._hand_over(new)

    async def _initial(self) -> int:
        """First run: deliver the newest ``backfill`` rows; everything older counts as seen."""
        rows, reached_end, _ = await self._read(depth=max(self.backfill, 1))
        # the newest ``backfill`` rows, plus anything posted since the watch began (the first
        # poll may run a moment after watch_topic returned)
        keep = [r for i, r in enumerate(rows) if i < self.backfill or r["_t"] >= self.watch_started_ms]
        self._rebuild(rows, reached_end, False, keep)
        self.initialized = True
        await self._save()
        return await self._hand_over(keep)

    def _skip(self, rows: list[dict[str, Any]]) -> None:
        """Unseen rows below the window: recorded as seen, not delivered; one WARNING line. (A read
        reaches below the window only when every page ended in an unseen row: never for a backlog,
        since the window is at least a backfill page deep, but for rows a broker clock put there.)"""
        self.skipped["beyond_window"] += len(rows)
        log.warning("mesh %s: #%s: %d unseen row(s) below the rows already seen were taken for history and "
                    "skipped (first: %s, createdAt %.40r); a broker clock stepped back far can cause this",
                    self.peer.name, self.topic.name, len(rows), rows[0]["id"], rows[0].get("createdAt"))

    async def _hand_over(self, new: list[dict[str, Any]]) -> int:
        try:
            rows = new[::-1]  # oldest first: bottom up, the broker's order
            size = HAND_OVER_BATCH if self.on_rows is not None else 1  # on_row: each row on its own
            for start in range(0, len(rows), size):
                await self._hand_over_batch(rows[start:start + size])
            self._trim()  # nothing pending any more: back to SEEN_LIMIT
        finally:
            if self._unsaved or new:
                await self._save()
        return len(new)

    async def _hand_over_batch(self, rows: list[dict[str, Any]]) -> None:
        """``rows`` (oldest first) to ``on_rows`` in one call (to ``on_row``: one row). A row that waits
        for its topic key stops the batch there: the rows before it are handed over, then
        :class:`KeyWait` is raised."""
        items: list[MeshInbound] = []
        done = 0
        waiting: KeyWait | None = None
        for row in rows:
            try:
                item = await self._decode(row)
            except KeyWait as exc:
                waiting = exc
                break
            if item is not None:
                items.append(item)
            done += 1
        if items:
            if self.on_rows is not None:
                await self.on_rows(items)
            else:
                await self.on_row(items[0])
            self.delivered += len(items)
        for row in rows[:done]:
            self._pending.discard(row["id"])
            self._seen_set.add(row["id"])
        self._unsaved += done
        await self._save(force=False)
        if waiting is not None:
            raise waiting

    async def _decode(self, row: dict[str, Any]) -> MeshInbound | None:
        """The row as a MeshInbound, or None for an echo or a row that does not open (counted).
        Raises :class:`KeyWait` for a bodyVersion 2 row whose topic key is not held yet."""
        peer = self.peer
        pubkey = row.get("senderPubkey") if isinstance(row.get("senderPubkey"), str) else ""
        own = row.get("senderMemberId") == self.cfg.member_id or (bool(pubkey) and pubkey in peer.own_keys)
        if own and not self.include_own:
            self.echoes += 1
            return None
        bv = row.get("bodyVersion")
        bv = bv if isinstance(bv, int) and not isinstance(bv, bool) else 1
        sealed = getattr(peer, "sealed", None)
        if bv == 2 and isinstance(getattr(peer, "v2_topics", None), set):
            peer.v2_topics.add(self.topic.id)  # an encrypted topic: auto never posts v1 into it
        if bv == 2 and sealed is not None:
            status = await sealed.ensure(self.topic)
            if status.state == UNENCRYPTED:  # a v2 row in a keyless topic: claimed since we looked?
                status = await sealed.ensure(self.topic, refresh=True)
            if status.state not in (SEALED, UNENCRYPTED):
                raise KeyWait(f"bodyVersion 2 row {row['id']} waits for the topic key ({status.state}: "
                              f"{status.detail})")
        res = peer.keyring.open_detailed(peer.name, self.topic.id, self.topic.name, str(row.get("nonce") or ""),
                                         str(row.get("ciphertext") or ""), bv)
        if res.text is None:
            self.undecryptable += 1
            log.warning("mesh %s: #%s row %s skipped: %s", peer.name, self.topic.name, row["id"], res.reason)
            return None
        created = row["_t"]
        if created <= 0:
            self.bad_timestamps += 1
            log.warning("mesh %s: #%s row %s has an unusable createdAt %.40r; delivered with the receipt time",
                        peer.name, self.topic.name, row["id"], row.get("createdAt"))
        reply_to = row.get("replyToId")
        item = MeshInbound(
            kind="topic", mesh=peer.name, mesh_id=self.cfg.mesh_id, id=row["id"], text=res.text,
            sender_pubkey=pubkey,
            sender_member_id=row.get("senderMemberId") if isinstance(row.get("senderMemberId"), str) else None,
            sender_name=row.get("senderName") if isinstance(row.get("senderName"), str) else None,
            topic=self.topic.name, topic_id=self.topic.id, body_version=bv,
            reply_to_id=reply_to if isinstance(reply_to, str) and reply_to else None,
            created_at=max(created, 0), message_id=row["id"],
        )
        return item
