"""Slack history catch-up (opt-in, ``history_catchup = true``).

Slack redelivers unacknowledged events for a while only; a longer outage loses them. With
catch-up on, the gateway keeps a per-channel cursor (the ``ts`` of the newest message it has
seen, live or fetched) in its key-value state, and after start and after every Socket Mode
reconnect reads ``conversations.history`` from that cursor for each channel bound ``in`` or
``both``. Fetched messages go through exactly the live-event path (same filters, same
``Message.id``), so anything that also arrives live is dropped by the core's inbox ledger.

Cursors and gaps. ``cursors[channel]`` is the newest ``ts`` seen. When the connection may have
missed something (start, reconnect) the cursor is snapshotted into ``gaps[channel]``: history
is read from there, and the gap moves forward only after each fetched message was submitted.
What is persisted is the gap while one is open, else the cursor, so a stop or crash during a
catch-up never skips the rest of the gap (live events after a reconnect do not push the saved
cursor past messages still to be fetched). A channel without a cursor starts at "now": the
first enable fetches nothing.

``conversations.history`` returns the newest messages of the range first and pages towards
older ones, so all pages of a channel are read before its messages are submitted, oldest
first. Thread replies are not returned (only parents and ``thread_broadcast``); edits and
deletes made while the gateway was down are not caught up either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

from claudemesh_gateway import RateLimit
from claudemesh_gateway.delivery.ratelimit import RateLimiter

if TYPE_CHECKING:
    from claudemesh_gateway.plugins.slack.gateway import SlackGateway

__all__ = ["CURSORS_KEY", "HistoryCatchup", "HistoryRateLimited", "HistoryRefused", "RateBucket"]

log = logging.getLogger(__name__)

CURSORS_KEY = "history_cursors"  # kv: {channel id: ts}
SAVE_DELAY = 2.0  # seconds: cursor writes are coalesced, and flushed on stop
RETRY_MIN, RETRY_MAX = 30.0, 600.0  # backoff after a failed (network, 5xx) catch-up run


class HistoryRefused(Exception):
    """Slack refused ``conversations.history`` for a channel (not_in_channel, ...) or at all
    (bad credentials). Retrying the same call will not help."""

    def __init__(self, error: str, *, bad_credentials: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.bad_credentials = bad_credentials


class _Stopped(Exception):
    """The gateway is stopping: leave the gap as it is."""


class HistoryRateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after} s")
        self.retry_after = retry_after


class RateBucket:
    """``per_minute`` history calls, burst 1, starting full: one bucket of the core's
    :class:`~claudemesh_gateway.delivery.ratelimit.RateLimiter` (``clock`` and ``sleep`` can be
    replaced in tests)."""

    def __init__(self, per_minute: float, *, clock: Any = time.monotonic, sleep: Any = asyncio.sleep) -> None:
        self.limiter = RateLimiter(monotonic=clock, sleep=sleep)
        self.limit = RateLimit(scope="slack:history", per_second=per_minute / 60.0, burst=1.0)

    async def acquire(self) -> float:
        """Take one token, sleeping until there is one. Returns the seconds waited."""
        return await self.limiter.acquire((self.limit,), "history")


def ts_key(ts: Any) -> Decimal | None:
    """A Slack ``ts`` ("1718000000.000100") as an exact number; None if it is not one."""
    if not isinstance(ts, str) or not ts:
        return None
    try:
        value = Decimal(ts)
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None


def ts_str(value: float | Decimal) -> str:
    return f"{Decimal(str(value)):.6f}" if isinstance(value, float) else f"{value:.6f}"


class HistoryCatchup:
    """Cursors, gaps and the background catch-up task of one :class:`SlackGateway`."""

    def __init__(self, gateway: SlackGateway) -> None:
        self.gw = gateway
        cfg = gateway.config
        self.page_limit = cfg.history_page_limit
        self.max_age = cfg.history_max_age
        self.bucket = RateBucket(cfg.history_rate_per_min)
        self.now = time.time  # wall clock for "now" cursors and history_max_age (tests may replace)
        self.sleep = asyncio.sleep  # Retry-After and retry backoff (tests may replace)
        self.cursors: dict[str, str] = {}
        self.gaps: dict[str, str] = {}
        self._epoch = 0  # bumped by every reconnect; a channel read during one is read again
        self._again = False
        self._task: asyncio.Task[Any] | None = None
        self._save_task: asyncio.Task[Any] | None = None
        self._refused: dict[str, str] = {}  # channel -> error already logged

    @property
    def name(self) -> str:
        return self.gw.name

    def channels(self) -> list[str]:
        """Channels bound in/both to this gateway, in binding order."""
        seen: dict[str, None] = {}
        for b in self.gw.ctx.bindings:
            if b.inbound and b.address.gateway == self.name:
                seen.setdefault(b.address.chat, None)
        return list(seen)

    # -- cursor state ---------------------------------------------------------------------
    async def load(self) -> None:
        self.cursors.clear()
        self.gaps.clear()
        self._epoch = 0
        try:
            saved = await self.gw.ctx.kv_get(CURSORS_KEY) or {}
        except Exception as exc:  # noqa: BLE001 - only costs this catch-up
            log.warning("gateway %s: could not load history cursors (%s)", self.name, type(exc).__name__)
            saved = {}
        if isinstance(saved, Mapping):
            for channel, ts in saved.items():
                if isinstance(channel, str) and ts_key(ts) is not None:
                    self.cursors[channel] = ts
        # everything since the last saved position may have been missed while we were down
        self.gaps.update(self.cursors)
        self._new_channels_start_now()

    def _new_channels_start_now(self) -> None:
        now = ts_str(self.now())
        for channel in self.channels():
            if channel not in self.cursors:
                self.cursors[channel] = now  # first enable (or a new binding): no old history
                self._dirty()

    def saved_state(self) -> dict[str, str]:
        bound = set(self.channels())
        horizon = Decimal(str(self.now() - self.max_age))
        state = {}
        for channel, ts in self.cursors.items():
            pos = self.gaps.get(channel, ts)
            key = ts_key(pos)
            if channel not in bound and (key is None or key < horizon):
                continue  # unbound and too old to matter: forget it (a re-binding starts at "now")
            state[channel] = pos
        return state

    async def save(self) -> None:
        try:
            await self.gw.ctx.kv_set(CURSORS_KEY, self.saved_state())
        except Exception as exc:  # noqa: BLE001 - the next save or stop writes it
            log.warning("gateway %s: could not save history cursors (%s)", self.name, type(exc).__name__)

    def _dirty(self) -> None:
        if not self.gw.started or (self._save_task is not None and not self._save_task.done()):
            return  # stop() saves at the end
        self._save_task = self.gw.spawn(self._save_later(), "history-save")

    async def _save_later(self) -> None:
        await asyncio.sleep(SAVE_DELAY)
        self._save_task = None
        await self.save()

    def seen(self, channel: str, ts: str) -> None:
        """A message of ``channel`` was handled (submitted or filtered out)."""
        new = ts_key(ts)
        if new is None:
            return
        old = ts_key(self.cursors.get(channel))
        if old is None or new > old:
            self.cursors[channel] = ts
            self._dirty()

    # -- triggers ----------------------------------------------------------------------------
    def connected(self, *, reconnect: bool) -> None:
        """Ingress is up. After a reconnect, whatever came since each cursor may be missing."""
        if reconnect:
            self._epoch += 1
            for channel in self.channels():
                if channel in self.cursors:
                    self.gaps.setdefault(channel, self.cursors[channel])
        self.request()

    def request(self) -> None:
        """Run a catch-up; if one is running, run once more after it."""
        self._again = True
        if self._task is None or self._task.done():
            self._task = self.gw.spawn(self._loop(), "history")

    def cancel(self) -> None:
        """Stop the catch-up and the pending save (the gateway's stop() awaits its tasks and
        then calls :meth:`save`)."""
        for task in (self._task, self._save_task):
            if task is not None and not task.done():
                task.cancel()
        self._task = self._save_task = None

    # -- the catch-up --------------------------------------------------------------------------
    async def _loop(self) -> None:
        backoff = RETRY_MIN
        while self._again and self.gw.started:
            self._again = False
            outcome = await self._run()
            if outcome == "stop":
                return
            if outcome == "retry":
                log.info("gateway %s: history catch-up incomplete; retrying in %.0f s", self.name, backoff)
                await self.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
                self._again = True
            else:
                backoff = RETRY_MIN

    async def _run(self) -> Literal["done", "retry", "stop"]:
        self._new_channels_start_now()
        outcome: Literal["done", "retry", "stop"] = "done"
        for channel in self.channels():
            if not self.gw.started:
                return "stop"
            start = self.gaps.get(channel)
            if start is None:
                continue
            try:
                await self._catch_up(channel, start)
            except _Stopped:
                return "stop"
            except HistoryRefused as exc:
                if exc.bad_credentials:
                    log.error(
                        "gateway %s: Slack refused the bot token during history catch-up (%s); stopped",
                        self.name,
                        exc.error,
                    )
                    return "stop"
                if self._refused.get(channel) != exc.error:
                    self._refused[channel] = exc.error
                    log.warning(
                        "gateway %s: cannot read the history of %s (%s); skipping it "
                        "(invite the bot / check the channels:history, groups:history scopes)",
                        self.name,
                        channel,
                        exc.error,
                    )
                # skipped: from now on, as for a new channel (inviting the bot later must not
                # read back history_max_age of messages it could never see)
                self.gaps.pop(channel, None)
                self.seen(channel, ts_str(self.now()))
                self._dirty()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - network, 5xx, a failed submit: keep the gap
                log.warning(
                    "gateway %s: history catch-up of %s failed (%s: %s); will retry",
                    self.name,
                    channel,
                    type(exc).__name__,
                    exc,
                )
                outcome = "retry"
        return outcome

    def _oldest(self, start: str) -> str:
        horizon = Decimal(ts_str(self.now() - self.max_age))
        key = ts_key(start)
        if key is None or key < horizon:
            log.info(
                "gateway %s: history cursor %s is older than history_max_age; catching up from %s",
                self.name,
                start,
                ts_str(horizon),
            )
            return ts_str(horizon)
        return start

    async def _catch_up(self, channel: str, start: str) -> None:
        epoch = self._epoch
        oldest = self._oldest(start)
        floor = ts_key(oldest)
        assert floor is not None
        found: dict[str, dict[str, Any]] = {}
        page: str | None = None
        while True:
            await self.bucket.acquire()
            if not self.gw.started:
                raise _Stopped
            try:
                resp = await self.gw.api.history_page(
                    channel, oldest=oldest, inclusive=False, limit=self.page_limit, cursor=page
                )
            except HistoryRateLimited as exc:
                log.info(
                    "gateway %s: conversations.history rate limited; retrying in %s s",
                    self.name,
                    exc.retry_after,
                )
                await self.sleep(exc.retry_after)
                continue  # the same page again
            for m in resp.get("messages") or ():
                key = ts_key(m.get("ts")) if isinstance(m, Mapping) else None
                if key is not None and key > floor:
                    found[m["ts"]] = dict(m)
            page = (resp.get("response_metadata") or {}).get("next_cursor") or None
            if not page:
                break
        self._refused.pop(channel, None)
        if found:
            log.info("gateway %s: catching up %d message(s) of %s", self.name, len(found), channel)
        for ts in sorted(found, key=lambda t: ts_key(t) or Decimal(0)):
            if not self.gw.started:
                raise _Stopped  # no submit after stop
            await self.gw.ingress.submit_history(channel, found[ts])
            # submitted (or filtered out): the gap moves past it
            gap = ts_key(self.gaps.get(channel))
            if gap is None or ts_key(ts) > gap:  # type: ignore[operator]
                self.gaps[channel] = ts
            self._dirty()
        if self._epoch == epoch:
            self.gaps.pop(channel, None)
            self._dirty()
        # else: a reconnect happened meanwhile; the loop runs again from self.gaps[channel]
