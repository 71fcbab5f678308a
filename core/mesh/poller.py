"""Topic ingestion by polling ``topic_history`` (A.12): topic posts are never pushed live.

Per topic we persist ``seen`` (the last 1000 row ids) and ``high_water`` (newest
``createdAt`` in ms). Each poll reads the newest page; when the whole page is unseen we
page backwards with ``beforeId`` (overlapping the oldest timestamp, because the cursor is a
strict ``<`` and would skip rows that tie on it) until we meet a seen row, an old row or an
empty page. New rows are handed over oldest first, and the cursor only advances after the
``on_message`` callback returned, so a crash re-delivers rather than loses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import MeshError, MeshTerminalError, StoreUnavailable
from .aio import TaskOwner, wait_event
from .keys import SEALED, UNENCRYPTED
from .state import KV_NAMESPACE
from .types import MeshInbound, Topic, parse_time_ms

__all__ = ["SEEN_LIMIT", "KeyWait", "TopicPoller"]

log = logging.getLogger(__name__)

SEEN_LIMIT = 1000
MAX_PAGE = 200  # the broker clamps topic_history limit to 1..200
MAX_ROW_ID_CHARS = 128  # topic_message ids are 32 characters
TIE_GRACE_MS = 2000  # unseen rows this much older than high_water still count as new (commit-order ties)


class KeyWait(MeshError):
    """A bodyVersion 2 row arrived and the topic's sealed key is not held yet: the poll stops at
    that row (nothing after it is handed over, the cursor stays) and is retried later."""


class TopicPoller(TaskOwner):
    """Polls one topic. ``include_own`` (tools) also delivers our own member's rows."""

    def __init__(self, peer: Any, topic: Topic, on_row: Callable[[MeshInbound], Awaitable[Any]], *,
                 include_own: bool = False, persist: bool = True, backfill: int | None = None) -> None:
        self.peer = peer
        self.cfg = peer.cfg
        self.topic = topic
        self.on_row = on_row
        self.include_own = include_own
        self.persist = persist
        self.backfill = self.cfg.topic_backfill if backfill is None else backfill
        self.key = f"{peer.name}:topic:{topic.id}"
        self.seen: list[str] = []
        self._seen_set: set[str] = set()
        self.high_water = 0
        self.initialized = False
        self.last_poll_at: float | None = None
        self.poll_latency: float | None = None
        self.polls = 0
        self.delivered = 0
        self.echoes = 0
        self.undecryptable = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._loaded = False
        self.watch_started_ms = int(time.time() * 1000)

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
                t0 = time.monotonic()
                n = await self.poll_once()
                self.poll_latency = time.monotonic() - t0
                self.last_poll_at = time.time()
                self.polls += 1
                self.last_error = None
                interval = self.cfg.topic_poll_interval if n else min(interval * 2, self.cfg.topic_poll_idle_interval)
            except asyncio.CancelledError:
                raise
            except KeyWait as exc:
                if self.last_error != str(exc):
                    log.warning("mesh %s: #%s: %s", self.peer.name, self.topic.name, exc)
                self.last_error = str(exc)
                interval = self.cfg.topic_poll_idle_interval
            except MeshTerminalError as exc:
                if conn.terminal_error is not None:
                    return  # refused for good
                # a clock skew is terminal only until the clock is fixed: keep the poller
                self.last_error = str(exc)
                interval = self.cfg.topic_poll_idle_interval
            except MeshError as exc:
                if conn.state == "stopped":
                    return
                self.last_error = str(exc)
                log.warning("mesh %s: polling #%s failed: %s", self.peer.name, self.topic.name, exc)
                interval = self.cfg.topic_poll_interval
            except StoreUnavailable as exc:  # the store logs its outage (rate-limited): rows are read again
                self.last_error = str(exc)
                interval = self.cfg.topic_poll_idle_interval
            except Exception as exc:  # on_message failed: keep the cursor, retry the same rows later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("mesh %s: handling a #%s row failed; will retry", self.peer.name, self.topic.name)
                interval = self.cfg.topic_poll_idle_interval
            self._wake.clear()
            await wait_event(self._wake, interval)

    # -- cursor ----------------------------------------------------------------------------------------------------------
    async def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.persist:
            return
        saved = await self.peer.kv.kv_get(KV_NAMESPACE, self.key)
        if isinstance(saved, dict) and saved.get("initialized"):
            self.seen = [str(x) for x in saved.get("seen") or []][-SEEN_LIMIT:]
            self._seen_set = set(self.seen)
            self.high_water = int(saved.get("high_water") or 0)
            self.initialized = True

    async def _save(self) -> None:
        if self.persist:
            await self.peer.kv.kv_set(KV_NAMESPACE, self.key, {
                "seen": self.seen, "high_water": self.high_water, "initialized": True, "topic": self.topic.name,
            })

    def _mark(self, row_id: str, created: int) -> None:
        if row_id not in self._seen_set:
            self.seen.append(row_id)
            self._seen_set.add(row_id)
            if len(self.seen) > SEEN_LIMIT:
                for old in self.seen[:-SEEN_LIMIT]:
                    self._seen_set.discard(old)
                self.seen = self.seen[-SEEN_LIMIT:]
        self.high_water = max(self.high_water, created)

    def _is_new(self, row: dict[str, Any]) -> bool:
        return row["id"] not in self._seen_set and row["_t"] >= self.high_water - TIE_GRACE_MS

    # -- fetching --------------------------------------------------------------------------------------------------------
    async def _page(self, before: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        frame: dict[str, Any] = {"type": "topic_history", "topic": self.topic.id,
                                 "limit": limit or self.cfg.topic_page_size}
        if before is not None:
            frame["beforeId"] = before
        reply = await self.peer.connection.request(frame)
        raw = reply.get("messages")
        if not isinstance(raw, list):
            raise MeshError(f"topic_history for #{self.topic.name} returned no messages list")
        rows = []
        for r in raw:
            # topic_message ids are 32 characters; a longer one would pin memory in ``seen`` (and the kv)
            if isinstance(r, dict) and isinstance(r.get("id"), str) and 0 < len(r["id"]) <= MAX_ROW_ID_CHARS:
                rows.append({**r, "_t": parse_time_ms(r.get("createdAt"))})
            else:
                log.debug("mesh %s: #%s: history entry without a usable id skipped", self.peer.name, self.topic.name)
        return rows

    @staticmethod
    def _before(page: list[dict[str, Any]]) -> tuple[str, bool]:
        """The ``beforeId`` for the next older page: the oldest row strictly newer than the page's
        oldest timestamp, so rows tied on that timestamp are re-read. ``False`` if none exists."""
        oldest_t = min(r["_t"] for r in page)
        newer = [r for r in page if r["_t"] > oldest_t]
        if newer:
            pick = min(newer, key=lambda r: (r["_t"], r["id"]))
            return pick["id"], True
        return min(page, key=lambda r: (r["_t"], r["id"]))["id"], False

    async def _collect(self, page: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        found = {r["id"]: r for r in page if self._is_new(r)}
        limit = self.cfg.topic_page_size
        before: str | None = None
        while len(page) >= limit and all(self._is_new(r) for r in page):
            if len(found) >= self.cfg.topic_max_backfill:
                log.warning("mesh %s: #%s: more than %d unseen rows; older ones are skipped (gap)",
                            self.peer.name, self.topic.name, self.cfg.topic_max_backfill)
                break
            anchor, overlapping = self._before(page)
            if not overlapping and limit < MAX_PAGE:
                # the whole page shares one timestamp: re-read this position with the largest page
                limit = MAX_PAGE
                page = await self._page(before, limit)
                for r in page:
                    if self._is_new(r):
                        found.setdefault(r["id"], r)
                continue
            if not overlapping:
                log.warning("mesh %s: #%s: %d rows share one timestamp; rows tied on it may be skipped",
                            self.peer.name, self.topic.name, len(page))
            before, limit = anchor, MAX_PAGE  # backfill pages are as large as the broker allows
            page = await self._page(before, limit)
            fresh = [r for r in page if self._is_new(r)]
            for r in fresh:
                found.setdefault(r["id"], r)
            if not page or not fresh:
                break
        return found

    async def _initial(self, page: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """First run: deliver the newest ``backfill`` rows; everything older counts as seen."""
        rows = list(page)
        limit = self.cfg.topic_page_size
        while self.backfill > len(rows) and len(page) >= limit:
            before, _ = self._before(page)
            limit = MAX_PAGE
            page = await self._page(before, limit)
            known = {r["id"] for r in rows}
            page = [r for r in page if r["id"] not in known]
            if not page:
                break
            rows.extend(page)
        rows.sort(key=lambda r: (r["_t"], r["id"]), reverse=True)
        # the newest ``backfill`` rows, plus anything posted since the watch began (the first
        # poll may run a moment after watch_topic returned)
        keep = [r for i, r in enumerate(rows) if i < self.backfill or r["_t"] >= self.watch_started_ms]
        kept = {r["id"] for r in keep}
        for r in rows:
            if r["id"] not in kept:
                self._mark(r["id"], r["_t"])
        self.initialized = True
        await self._save()
        return {r["id"]: r for r in keep}

    # -- one poll ----------------------------------------------------------------------------------------------------------
    async def poll_once(self) -> int:
        """Fetch and hand over new rows; returns how many rows were new (delivered or skipped)."""
        await self._load()
        page = await self._page()
        found = await (self._collect(page) if self.initialized else self._initial(page))
        ordered = sorted(found.values(), key=lambda r: (r["_t"], r["id"]))
        for row in ordered:
            await self._handle(row)
        return len(ordered)

    async def _handle(self, row: dict[str, Any]) -> None:
        peer = self.peer
        own = row.get("senderMemberId") == self.cfg.member_id or row.get("senderPubkey") in peer.own_keys
        if own and not self.include_own:
            self.echoes += 1
        else:
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
            else:
                reply_to = row.get("replyToId")
                item = MeshInbound(
                    kind="topic", mesh=peer.name, mesh_id=self.cfg.mesh_id, id=row["id"], text=res.text,
                    sender_pubkey=str(row.get("senderPubkey") or ""),
                    sender_member_id=row.get("senderMemberId") if isinstance(row.get("senderMemberId"), str) else None,
                    sender_name=row.get("senderName") if isinstance(row.get("senderName"), str) else None,
                    topic=self.topic.name, topic_id=self.topic.id, body_version=bv,
                    reply_to_id=reply_to if isinstance(reply_to, str) and reply_to else None,
                    created_at=row["_t"], message_id=row["id"],
                )
                await self.on_row(item)
                self.delivered += 1
        self._mark(row["id"], row["_t"])
        await self._save()
