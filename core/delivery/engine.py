"""The delivery engine: drains the outbox, one ordered worker per lane.

* **Order.** One worker per lane (destination key), one item in flight per lane; the parts of a
  split message go out in order and ``store.progress`` records each, so a crash mid-split resumes
  at the next part.
* **Rate limits.** Before every part, one token from every bucket the transport declared (per chat,
  per group, global...). See :mod:`.ratelimit`.
* **Completions.** Each delivered item is recorded (removed from the outbox) before its lane sends
  the next one. The removal is queued just before the message-map write, so both share the store's
  group commit (removals of other lanes queued meanwhile join one ``complete_many``): a lane waits
  for about one commit per item, and a crash re-sends at most the one item per lane that was being
  sent or recorded.
* **Failures.** ``DeliveryError(permanent=True)`` -> dead letter + ``DeliveryFailed(permanent=True)``.
  Transient errors (and unexpected exceptions, with a lower cap) -> exponential backoff with jitter:
  only that lane waits. The wait runs on the monotonic clock (a step of the wall clock neither
  stalls nor hurries it); the item's ``not_before`` is persisted as wall-clock time for a restart.
  A ``retry_after`` replaces the backoff; if the error also names a rate-limit ``scope`` (attribute
  ``scope`` on the exception) that bucket is paused too, so every lane sharing it waits and no other.
* **Scheduling.** ``kick(lane)`` after an enqueue wakes the scheduler at once; timers wake it when a
  backoff expires; a low-frequency safety poll catches changes made by another process (``dlq
  retry`` from the CLI). No busy loop. ``start()`` picks up every queued lane (restart recovery).
* **Shutdown.** ``stop(drain_timeout)`` takes no new item, lets items being sent finish within the
  bound and cancels the rest; queued items stay in the store.
* **Store outage.** While the store reports a ``write_problem`` (disk full, I/O error...), lanes send
  nothing: a send that cannot be recorded would be sent again. An item sent just before the outage
  whose removal failed is kept in memory and removed once writes succeed, never sent again by this
  process. The store logs the outage (rate-limited); the engine adds no line per attempt.

Delivery is at least once: a crash between a send and its ``complete`` commit sends that part
again on restart (``Outbound.idempotency_key`` lets gateways that can deduplicate do so).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import DeliveryError, StoreUnavailable
from ..events import DeliveryFailed, Event, MessageDelivered
from ..gateway import RateLimit
from ..messages import Address, Message, Outbound, SendResult, address_from_dict, message_from_dict
from ..store.base import OutboxItem, Store
from .config import DeliveryConfig, backoff_delay
from .ratelimit import RateLimiter

__all__ = ["DeliveryEngine", "DeliveryStats", "Transport"]

log = logging.getLogger(__name__)


@runtime_checkable
class Transport(Protocol):
    """What the engine needs from the core: turn an item into parts, send a part, record success.

    Optionally ``async failed(item, error: str, permanent: bool) -> None`` (notices back to the
    sender); it is called after every failed attempt with ``permanent`` telling whether the item
    went to the dead letters.
    """

    async def render(self, item: OutboxItem) -> tuple[list[Outbound], Sequence[RateLimit]]:
        """Parts to send (in order) and the rate limits that apply. Raise ``DeliveryError(permanent=True)``
        when the item can never be sent (unknown gateway, invalid destination)."""

    async def send(self, out: Outbound) -> SendResult: ...

    async def delivered(self, item: OutboxItem, results: list[SendResult]) -> None:
        """All parts are out (``results`` holds those sent by this attempt): record the message map."""


@dataclasses.dataclass(slots=True)
class DeliveryStats:
    """Counters since start (for /-/metrics and stall detection)."""

    delivered: int = 0  # items fully delivered
    parts_sent: int = 0
    failed_transient: int = 0  # attempts that will be retried
    dead_lettered: int = 0
    retry_after: int = 0  # vendor throttling answers (HTTP 429 / retry_after)
    unexpected_errors: int = 0  # exceptions that were not DeliveryError (bugs)
    rate_limit_waits: int = 0  # sends that waited for a token
    rate_limit_wait_seconds: float = 0.0
    last_activity: float = 0.0  # wall time the last delivery attempt completed, success or not (0: none)
    last_error: str = ""
    active_lanes: int = 0
    waiting_lanes: int = 0  # ready lanes held back by the concurrency cap


class DeliveryEngine:
    """Deliver outbox items through ``transport``.

    :param store: any :class:`~claudemesh_gateway.store.base.Store`; ``peek(lane, n)``,
        ``next_due(now)``, ``complete_many(ids)``, ``lanes_after(id)``, ``max_id()`` and
        ``sent_parts(id)`` (with ``progress(id, n, sent=...)``) are used when
        the store has them (SqliteStore does); without them the engine falls back to the protocol.
    :param transport: see :class:`Transport`.
    :param config: :class:`DeliveryConfig`.
    :param emit: called with ``MessageDelivered`` / ``DeliveryFailed`` events; must not block.
    :param clock: wall clock (epoch seconds) for the persisted ``not_before``, ages and latencies.
    :param monotonic: clock for rate limits, timers and the backoff of this process's retries.
    :param sleep: ``asyncio.sleep``-compatible; every timed wait of the engine goes through it.
    :param rng: random source for backoff jitter.
    :param lanes: several replicas on one store: a gate with ``async acquire(lane) -> bool``,
        ``async release(lane)`` and ``holds(lane) -> bool`` (``store.leases.LaneLeases``). A lane is
        delivered only while this replica holds its lease, so per-chat order and rate limits hold
        across replicas; without it (one process) the store's delivery lock is taken instead.
    :param trace: a :class:`~claudemesh_gateway.trace.TraceRecorder`: every attempt is recorded.
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        *,
        config: DeliveryConfig | None = None,
        emit: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        lanes: Any = None,
        trace: Any = None,
    ) -> None:
        self.store = store
        self._gate = lanes
        self.transport = transport
        self.config = config or DeliveryConfig()
        self._emit = emit
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.rng = rng or random.Random()
        # the message-trace recorder (claudemesh_gateway.trace.TraceRecorder); None or disabled: off
        self.trace = trace if trace is not None and getattr(trace, "enabled", False) else None
        self.limiter = RateLimiter(monotonic=monotonic, sleep=sleep, idle_ttl=self.config.bucket_idle_ttl)
        self._stats = DeliveryStats()
        self._failed_hook = getattr(transport, "failed", None)
        self._peek = getattr(store, "peek", None)
        self._next_due_q = getattr(store, "next_due", None)
        self._complete_many = getattr(store, "complete_many", None)
        self._sent_parts = getattr(store, "sent_parts", None)  # with progress(..., sent=...)
        self._lanes_after = getattr(store, "lanes_after", None)
        self._max_id = getattr(store, "max_id", None) if self._lanes_after is not None else None
        self._high_id = 0  # highest outbox id looked at (for kick() without a lane)
        self._kick_new = False
        self._flushing: set[asyncio.Future[None]] = set()  # completion writes on their way to the store
        # (ids, write) of the removal write that has not started yet; ids may still be appended
        self._completing: tuple[list[int], asyncio.Future[None]] | None = None
        self._unrecorded: dict[int, str] = {}  # delivered item id -> lane, its removal failed: retry it
        self._retry_at: dict[str, tuple[int, float]] = {}  # lane -> (head item id, monotonic deadline)

        self._workers: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[str, int] = {}  # lane -> id of the item being sent
        self._sending: set[str] = set()  # lanes inside render/send/record (not waiting)
        self._dirty: set[str] = set()  # lanes kicked while their worker ran
        self._waiting: dict[str, None] = {}  # ready lanes beyond the concurrency cap, FIFO
        self._kicked: dict[str, None] = {}
        self._kick_all = False
        self._due: float | None = None  # earliest known due time in the future (monotonic clock)
        self._wake: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the scheduler; every lane already queued in the store is picked up."""
        if self._started:
            return
        lock = getattr(self.store, "acquire_delivery_lock", None) if self._gate is None else None
        if lock is not None:
            r = lock()  # StartupError if another process delivers from the same store
            if inspect.isawaitable(r):  # a database store takes its lock over the network
                await r
        self._started = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._kick_all = True
        self._wake.set()
        self._scheduler = asyncio.create_task(self._run(), name="delivery-scheduler")
        log.info("delivery engine started (concurrency %d)", self.config.concurrency)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop taking items; let sends in progress finish within ``drain_timeout`` seconds
        (config default), then cancel what is left. Queued items stay in the store."""
        if not self._started:
            return
        self._stopping = True
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None
        # lanes only waiting (for a token, between items) stop now; lanes mid-send may finish
        for lane, task in list(self._workers.items()):
            if lane not in self._sending:
                task.cancel()
        tasks = list(self._workers.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("delivery: %d lane(s) still sending after %.1fs; cancelling", len(pending), timeout)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._flushing:  # removals of delivered items still on their way to the store
            await asyncio.wait(list(self._flushing), timeout=max(1.0, timeout))
        self._workers.clear()
        self._waiting.clear()
        self._dirty.clear()
        self._kicked.clear()
        self._started = False
        unlock = getattr(self.store, "release_delivery_lock", None) if self._gate is None else None
        if unlock is not None:
            r = unlock()
            if inspect.isawaitable(r):
                await r
        log.info("delivery engine stopped")

    def kick(self, lane: str | None = None, *, full: bool = False) -> None:
        """Wake the scheduler after an enqueue.

        ``kick(lane)``: look at that lane (no query at all). ``kick()``: look at the lanes of items
        enqueued since the last look (a cheap primary-key range read when the store has
        ``lanes_after``). ``kick(full=True)``: rescan the whole outbox (after a change made outside
        the normal paths; the safety poll does the same every ``poll_interval``).
        """
        if self._stopping or self._wake is None:
            return
        if full:
            self._kick_all = True
        elif lane is None:
            self._kick_new = True
        elif lane in self._workers:
            self._dirty.add(lane)
            return
        else:
            self._kicked[lane] = None
        self._wake.set()

    # -- observability ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for /-/metrics and stall detection (see :class:`DeliveryStats` for the keys;
        ``throttled`` and ``http_429`` are aliases of ``retry_after``)."""
        s = dataclasses.replace(self._stats)
        s.rate_limit_waits = self.limiter.waits
        s.rate_limit_wait_seconds = self.limiter.wait_seconds
        s.active_lanes = len(self._workers)
        s.waiting_lanes = len(self._waiting)
        out = dataclasses.asdict(s)
        out["throttled"] = out["http_429"] = s.retry_after
        return out

    def in_flight(self) -> dict[str, int]:
        """lane -> id of the outbox item being delivered right now."""
        return dict(self._inflight)

    async def queue_depths(self) -> dict[str, tuple[int, float]]:
        """lane -> (queued items, enqueued_at of the oldest), from the store."""
        return await self.store.outbox_depths()

    # -- scheduler ---------------------------------------------------------------------------------------
    def _note_due(self, when: float) -> None:
        if self._due is None or when < self._due:
            self._due = when
            if self._wake is not None:
                self._wake.set()

    async def _wait(self, delay: float) -> None:
        """Until kicked or ``delay`` seconds (through the injected sleep) have passed."""
        assert self._wake is not None
        if self._wake.is_set():
            return
        waiter = asyncio.ensure_future(self._wake.wait())
        timer = asyncio.ensure_future(self.sleep(max(0.0, delay)))
        try:
            await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
            await asyncio.gather(waiter, timer, return_exceptions=True)

    async def _run(self) -> None:
        assert self._wake is not None
        cfg = self.config
        last_poll = self.monotonic() - cfg.poll_interval  # first round polls
        while not self._stopping:
            self._wake.clear()
            now = self.clock()
            mono = self.monotonic()
            lanes: dict[str, None] = self._kicked
            self._kicked = {}
            due = self._due is not None and mono >= self._due
            full = (
                self._kick_all
                or (self._kick_new and self._lanes_after is None)
                or mono - last_poll >= cfg.poll_interval
                or due
            )
            if due:  # this process's retries are timed on the monotonic clock, whatever not_before says
                for lane, (_id, at) in list(self._retry_at.items()):
                    if at <= mono:
                        lanes[lane] = None
            try:
                if full:
                    self._kick_all = self._kick_new = False
                    # the high-water mark first: rows committed after it are seen by the next look
                    high = await self._max_id() if self._max_id is not None else None
                    for lane in await self.store.ready_lanes(now):
                        lanes[lane] = None
                    stored = await self._next_due_q(now) if self._next_due_q is not None else None
                    # a wall-clock deadline from the store (a restart, another process) -> monotonic
                    self._due = None if stored is None else mono + max(0.0, stored - now)
                    mono = self.monotonic()
                    for _id, at in self._retry_at.values():
                        if at > mono and (self._due is None or at < self._due):
                            self._due = at
                    if high is not None:
                        self._high_id = max(self._high_id, high)
                    last_poll = self.monotonic()
                elif self._kick_new and self._lanes_after is not None:
                    self._kick_new = False
                    new_lanes, self._high_id = await self._lanes_after(self._high_id)
                    for lane in new_lanes:
                        lanes[lane] = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not isinstance(e, StoreUnavailable):  # the store logs its own outage, rate-limited
                    log.exception("delivery: reading the outbox failed; retrying")
                self._due = None
                self._kick_all = True
                for lane in lanes:
                    self._kicked[lane] = None
                await self._wait(1.0)
                continue
            for lane in lanes:
                self._spawn(lane)
            timeout = cfg.poll_interval - (self.monotonic() - last_poll)
            if self._due is not None:
                timeout = min(timeout, self._due - self.monotonic())
            await self._wait(timeout)

    def _spawn(self, lane: str) -> None:
        if lane in self._workers:
            self._dirty.add(lane)
            return
        if len(self._workers) >= self.config.concurrency:
            self._waiting[lane] = None
            return
        self._waiting.pop(lane, None)
        work = self._lane(lane) if self._gate is None else self._leased_lane(lane)
        self._workers[lane] = asyncio.create_task(work, name=f"delivery:{lane}")

    # -- lane leases (several replicas) -------------------------------------------------------------------
    async def _leased_lane(self, lane: str) -> None:
        """``_lane`` under the lane's lease: skipped when another replica delivers the lane (it drains
        what we enqueued; after an owner's crash the safety poll brings the lane back here)."""
        gate = self._gate
        try:
            got = await gate.acquire(lane)
        except Exception:  # noqa: BLE001 - no store, no lease: the safety poll tries again
            got = False
        if not got:
            self._lane_done(lane)
            return
        try:
            await self._lane(lane)
        finally:
            await gate.release(lane)
        # rows another replica enqueued while we held the lane were not delivered by it: look again
        if not self._stopping and lane not in self._workers:
            with contextlib.suppress(Exception):
                head = await self.store.head(lane)
                if head is not None and head.not_before <= self.clock():
                    self.kick(lane)

    def _lane_held(self, lane: str) -> bool:
        return self._gate is None or self._gate.holds(lane)

    def _lane_done(self, lane: str) -> None:
        self._workers.pop(lane, None)
        self._inflight.pop(lane, None)
        self._sending.discard(lane)
        if self._stopping:
            return
        if lane in self._dirty:  # kicked after its last look: look again
            self._dirty.discard(lane)
            self._kicked[lane] = None
            assert self._wake is not None
            self._wake.set()
        while self._waiting and len(self._workers) < self.config.concurrency:
            nxt = next(iter(self._waiting))
            del self._waiting[nxt]
            self._spawn(nxt)

    # -- lane worker ------------------------------------------------------------------------------------------
    def _hold(self, item: OutboxItem) -> float:
        """Seconds ``item`` must still wait before its next attempt (<= 0: go)."""
        entry = self._retry_at.get(item.lane)
        if entry is not None:
            if entry[0] == item.id:  # retried by this process: its monotonic deadline rules
                return entry[1] - self.monotonic()
            del self._retry_at[item.lane]  # that item is gone (dead-lettered or removed elsewhere)
        return item.not_before - self.clock()

    def _store_problem(self) -> str | None:
        problem = getattr(self.store, "write_problem", None)
        return problem if isinstance(problem, str) and problem else None

    async def _lane(self, lane: str) -> None:
        try:
            while not self._stopping:
                self._dirty.discard(lane)
                if self._store_problem() is not None:  # a send now could not be recorded: wait
                    self._note_due(self.monotonic() + self.config.backoff_base)
                    return
                await self._record_unrecorded(lane)
                if self._peek is not None:
                    items = await self._peek(lane, self.config.prefetch)
                else:
                    head = await self.store.head(lane)
                    items = [head] if head is not None else []
                if not items:
                    if lane in self._dirty:
                        continue
                    return
                for item in items:
                    if self._stopping or not self._lane_held(lane):  # lease lost: another replica goes on
                        return
                    hold = self._hold(item)
                    if hold > 0:
                        self._note_due(self.monotonic() + hold)
                        return
                    outcome = await self._deliver(item)
                    if outcome == "retry":
                        return
                    if outcome == "reread":
                        break
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a store failure: the items stay queued; retry this lane later
            if not isinstance(e, StoreUnavailable):  # the store logs its own outage, rate-limited
                log.exception("delivery: lane %s failed; retrying later", lane)
            self._note_due(self.monotonic() + self.config.backoff_base)
        finally:
            self._lane_done(lane)

    async def _record_unrecorded(self, lane: str) -> None:
        """Remove the items of ``lane`` delivered earlier whose removal failed (before reading it again)."""
        ids = [i for i, ln in self._unrecorded.items() if ln == lane]
        if ids:
            await asyncio.shield(self._submit_completion(list(ids)))
            for i in ids:
                self._unrecorded.pop(i, None)
            log.info("delivery: %d delivered item(s) of %s recorded after the store recovered", len(ids), lane)

    def _complete_soon(self, item_id: int) -> asyncio.Future[None]:
        """Queue the removal of a delivered item. The write is submitted when the event loop next
        runs, ahead of what the lane writes meanwhile (the message map), so both share one group
        commit; removals queued by other lanes before that join the same ``complete_many``."""
        if self._completing is None or self._completing[1].done():  # (done: cancelled before it ran)
            fresh: list[int] = []
            self._completing = (fresh, self._submit_completion(fresh))
        ids, write = self._completing
        ids.append(item_id)
        return write

    def _submit_completion(self, ids: list[int]) -> asyncio.Future[None]:
        fut = asyncio.ensure_future(self._complete(ids))
        self._flushing.add(fut)
        fut.add_done_callback(self._flushing.discard)
        return fut

    async def _complete(self, ids: list[int]) -> None:
        if self._completing is not None and self._completing[0] is ids:
            self._completing = None  # started: later removals go into the next write
        if self._complete_many is not None:
            await self._complete_many(ids)
        else:
            for i in ids:
                await self.store.complete(i)

    async def _recorded(self, item: OutboxItem, fut: asyncio.Future[None]) -> None:
        """Wait for the removal of delivered ``item``; if it failed, keep the id to retry it."""
        try:
            await asyncio.shield(fut)  # a cancelled lane leaves the write to complete on its own
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._unrecorded[item.id] = item.lane
            if not isinstance(e, StoreUnavailable):
                log.error("delivery: recording delivered item %s failed (kept, retried before the lane goes on): %s",
                          item.id, e)
            raise

    async def _deliver(self, item: OutboxItem) -> str:
        """One item: 'done' (next item), 'retry' (lane waits), 'reread' (re-read the lane)."""
        lane = item.lane
        self._inflight[lane] = item.id
        self._sending.add(lane)
        self._retry_at.pop(lane, None)
        outs: list[Outbound] = []
        limits: Sequence[RateLimit] = ()
        started = self.monotonic()
        traced = self.trace.attach(item) if self.trace is not None else None  # log lines carry its trace id
        try:
            try:
                outs, limits = await self.transport.render(item)
            except DeliveryError as e:
                return await self._failed(item, e, outs, limits)
            except StoreUnavailable:
                raise
            except Exception as e:
                log.exception("delivery: rendering item %s for %s failed", item.id, lane)
                return await self._failed(item, e, outs, limits)
            if not limits:
                limits = self.config.limits_for(item.destination, lane)
            results: list[SendResult] = []
            total = len(outs)
            send_timeout = self.config.send_timeout
            if item.progress and total and self._sent_parts is not None:
                # resuming a split message: the parts sent before belong in the message map too
                saved = await self._sent_parts(item.id)
                results = [SendResult(native_ids=tuple(p)) for p in saved[: min(item.progress, total)]]
            for idx in range(min(item.progress, total), total):
                if limits:
                    self._sending.discard(lane)
                    await self.limiter.acquire(limits, lane)
                    self._sending.add(lane)
                try:
                    if send_timeout:
                        async with asyncio.timeout(send_timeout):
                            res = await self.transport.send(outs[idx])
                    else:
                        res = await self.transport.send(outs[idx])
                except TimeoutError:
                    err = DeliveryError(f"send timed out after {send_timeout:g}s")
                    return await self._failed(item, err, outs, limits)
                except DeliveryError as e:
                    return await self._failed(item, e, outs, limits)
                except Exception as e:
                    log.exception("delivery: sending item %s part %d to %s raised", item.id, idx + 1, lane)
                    return await self._failed(item, e, outs, limits)
                results.append(res)
                self._stats.parts_sent += 1
                self._stats.last_activity = self.clock()
                if idx + 1 < total:
                    if self._sent_parts is not None:
                        await self.store.progress(  # type: ignore[call-arg]
                            item.id, idx + 1, sent=[r.native_ids for r in results])
                    else:
                        await self.store.progress(item.id, idx + 1)
            # the removal is queued first, so it shares the commit of the message map written next
            recorded = self._complete_soon(item.id)
            try:
                await self.transport.delivered(item, results)
            except StoreUnavailable:
                pass  # the store logs its outage; the removal below fails too and is kept for a retry
            except Exception:  # the parts are out: never send them again for a map failure
                log.exception("delivery: recording the message map of item %s failed", item.id)
            if total == 0:  # nothing to send (e.g. a delete the destination cannot do): just drop it
                log.debug("delivery: item %s for %s rendered to nothing; removed", item.id, lane)
            else:
                self._stats.delivered += 1
                native: tuple[str, ...] = tuple(n for r in results for n in r.native_ids)
                if self.trace is not None:
                    self.trace.delivered(item, attempt=item.attempts + 1, native_ids=native, parts=total,
                                         took=self.monotonic() - started, reply_to=outs[0].reply_to,
                                         edit_of=outs[0].edit_of)
                message, to = self._message_to(item, outs)
                self._publish(MessageDelivered(
                    message=message, to=to, route=item.route,
                    native_ids=native, latency_s=max(0.0, self.clock() - item.enqueued_at),
                ))
            await self._recorded(item, recorded)
            return "done"
        finally:
            self._inflight.pop(lane, None)
            self._sending.discard(lane)
            if traced is not None:
                self.trace.detach(traced)

    async def _failed(
        self, item: OutboxItem, err: BaseException, outs: list[Outbound], limits: Sequence[RateLimit]
    ) -> str:
        cfg = self.config
        now = self.clock()
        unexpected = not isinstance(err, DeliveryError)
        permanent = isinstance(err, DeliveryError) and err.permanent
        retry_after = err.retry_after if isinstance(err, DeliveryError) and not permanent else None
        text = (f"{type(err).__name__}: {err}" if unexpected else str(err)) or type(err).__name__
        text = text[:1000]
        self._stats.last_error = text
        self._stats.last_activity = now
        if unexpected:
            self._stats.unexpected_errors += 1
        attempts = item.attempts
        reason = text
        if not permanent:
            if retry_after is not None and retry_after >= 0:
                self._stats.retry_after += 1
                scope = getattr(err, "scope", None)
                if scope and any(lim.scope == scope for lim in limits):
                    self.limiter.pause(scope, max(retry_after, cfg.retry_after_floor))
            else:
                retry_after = None
                attempts += 1
            cap = cfg.max_attempts_unexpected if unexpected else cfg.max_attempts
            age = now - item.enqueued_at if item.enqueued_at else 0.0
            if attempts >= cap:
                permanent, reason = True, f"gave up after {attempts} attempts: {text}"
            elif age >= cfg.max_age:
                permanent, reason = True, f"gave up after {age:.0f}s in the outbox: {text}"
        message, to = self._message_to(item, outs)
        if permanent:
            if self.trace is not None:
                self.trace.failed(item, attempt=item.attempts + 1, error=reason, retry_after=None, next_at=None,
                                  permanent=True)
            await self.store.dead_letter(item.id, reason)
            self._stats.dead_lettered += 1
            log.warning("delivery to %s failed permanently, item %s dead-lettered: %s", item.lane, item.id, reason)
            self._publish(DeliveryFailed(message=message, to=to, route=item.route, error=reason, permanent=True))
            await self._notify(item, reason, True)
            return "reread"
        if retry_after is not None:  # the vendor's word, floored so a "retry after 0" cannot spin
            delay = max(retry_after, cfg.retry_after_floor)
        else:
            delay = backoff_delay(attempts, cfg, self.rng)
        # this process waits on the monotonic clock; the wall-clock not_before is for a restart
        retry_at = self.monotonic() + delay
        if self.trace is not None:
            self.trace.failed(item, attempt=item.attempts + 1, error=text, retry_after=retry_after,
                              next_at=now + delay, permanent=False)
        await self.store.reschedule(item.id, not_before=now + delay, attempts=attempts, error=text)
        self._retry_at[item.lane] = (item.id, retry_at)
        self._stats.failed_transient += 1
        log.info("delivery to %s failed (attempt %d), retrying in %.1fs: %s", item.lane, attempts, delay, text)
        self._publish(DeliveryFailed(message=message, to=to, route=item.route, error=text, permanent=False))
        await self._notify(item, text, False)
        self._note_due(retry_at)
        return "retry"

    async def _notify(self, item: OutboxItem, error: str, permanent: bool) -> None:
        if self._failed_hook is None:
            return
        try:
            await self._failed_hook(item, error, permanent)
        except Exception:
            log.exception("delivery: the transport's failure notice for item %s raised", item.id)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _publish(self, event: Event) -> None:
        if self._emit is None:
            return
        try:
            self._emit(event)
        except Exception:
            log.exception("delivery: an event observer raised")

    @staticmethod
    def _message_to(item: OutboxItem, outs: list[Outbound]) -> tuple[Message, Address]:
        """The message and destination of ``item``: its first rendered part's, else parsed from the row."""
        if outs:
            return outs[0].message, outs[0].to
        try:
            message = message_from_dict(item.message)
        except Exception:  # noqa: BLE001 - malformed row: still report something useful
            message = Message(id=str(item.message.get("id", f"outbox:{item.id}")), origin=Address("?", "?"), sender="")
        try:
            to = address_from_dict(item.destination)
        except Exception:  # noqa: BLE001 - malformed row: still name the lane
            to = Address("?", item.lane)
        return message, to

    def describe(self) -> dict[str, Any]:
        """A JSON-safe snapshot for the admin API / dashboard."""
        return {**self.stats(), "in_flight": self.in_flight(), "buckets": len(self.limiter.buckets)}
