"""What the SQLite and PostgreSQL backends do the same way, written once.

* Rows: an :class:`~.base.OutboxItem` <-> its outbox row, dead-letter and audit rows.
* :class:`StoreBackend`, the base class of both stores: the write methods of the Store protocol,
  retention's among them (each hands the backend's own operation, :class:`WriteOps`, to its
  writer), the outage bookkeeping (``write_problem``, the rate-limited log lines, the probe write),
  how a committed or failed batch resolves its callers' futures, the pruning loop and closing's
  first steps, ``trace_search``.

The SQL (its dialect and placeholders), the writer itself and the reads stay in each backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ..errors import StartupError, StoreUnavailable
from .base import DeadLetter, OutboxItem
from .jsonio import dumps, loads
from .retention import DAY, MIN_INBOX_DAYS

__all__ = [
    "HEADS", "MIN_INBOX_TTL", "OUTAGE_LOG_EVERY", "OUTBOX_COLS", "ROW_COLS", "TRACE_SUMMARY_SELECT",
    "StoreBackend", "WriteOps", "audit_from_row", "dead_letter_from_row", "item_from_row", "item_row",
    "item_rows", "refuse_newer",
]

MIN_INBOX_TTL = MIN_INBOX_DAYS * DAY  # see retention.py: the broker keeps undelivered queue rows 7 days
OUTAGE_LOG_EVERY = 60.0  # seconds between "still cannot write" lines

# -- rows ----------------------------------------------------------------------------------------------

ROW_COLS = "lane, route, destination, message, options, attempts, not_before, progress, last_error, enqueued_at"
OUTBOX_COLS = "id, " + ROW_COLS
HEADS = "SELECT lane, MIN(id) AS hid FROM outbox GROUP BY lane"  # each lane's oldest item
TRACE_SUMMARY_SELECT = (
    "SELECT message_id, first_at, last_at, origin, sender, routes, lanes, dropped, dests, delivered, failed, dead"
    " FROM trace_messages"
)


def item_row(item: OutboxItem, now: float) -> tuple[Any, ...]:
    """The ``ROW_COLS`` values of ``item`` (``enqueued_at`` defaults to ``now``)."""
    return (
        item.lane, item.route, dumps(item.destination), dumps(item.message), dumps(item.options),
        item.attempts, item.not_before, item.progress, item.last_error, item.enqueued_at or now,
    )


def item_rows(items: Sequence[OutboxItem], now: float) -> list[tuple[Any, ...]]:
    """``item_row`` of each item; a message dict shared by several items (one message fanned out
    to several destinations) is encoded once."""
    if len(items) < 2:
        return [item_row(i, now) for i in items]
    encoded: dict[int, str] = {}  # id() of a message dict -> its JSON (every dict stays alive meanwhile)
    rows = []
    for item in items:
        msg = encoded.get(id(item.message))
        if msg is None:
            msg = encoded[id(item.message)] = dumps(item.message)
        rows.append((
            item.lane, item.route, dumps(item.destination), msg, dumps(item.options),
            item.attempts, item.not_before, item.progress, item.last_error, item.enqueued_at or now,
        ))
    return rows


def item_from_row(r: Sequence[Any]) -> OutboxItem:
    """The item of a row that starts with ``OUTBOX_COLS``."""
    return OutboxItem(
        id=r[0], lane=r[1], route=r[2], destination=loads(r[3]), message=loads(r[4]),
        options=loads(r[5]), attempts=r[6], not_before=r[7], progress=r[8], last_error=r[9],
        enqueued_at=r[10],
    )


def dead_letter_from_row(r: Sequence[Any]) -> DeadLetter:
    """A row of ``OUTBOX_COLS, reason, failed_at`` from ``dead_letters``."""
    return DeadLetter(id=r[0], item=item_from_row(r), reason=r[11], failed_at=r[12])


def audit_from_row(r: Sequence[Any]) -> dict[str, Any]:
    """A row of ``id, ts, actor, action, detail`` from ``audit``."""
    return {"id": r[0], "ts": r[1], "actor": r[2], "action": r[3], "detail": loads(r[4])}


def refuse_newer(current: int, supported: int) -> None:
    """Raise StartupError when the schema found (``current``) is newer than this version knows."""
    if current > supported:
        raise StartupError(
            f"the store schema is version {current}, newer than this gateway understands "
            f"({supported}); upgrade claudemesh-gateway or restore a backup"
        )


# -- the store ---------------------------------------------------------------------------------------------

Op = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


@dataclasses.dataclass(frozen=True, slots=True)
class WriteOps:
    """A backend's write operations, ``op(conn, *args)``, run by its writer inside the batch
    transaction (synchronous for SQLite, coroutines for PostgreSQL)."""

    accept: Callable[..., Any]  # (message_id, now, rows) -> bool
    accept_mapped: Callable[..., Any]  # (message_id, now, rows, [(lane, native_ids)]) -> bool
    enqueue: Callable[..., Any]  # (rows) -> [id]
    progress: Callable[..., Any]  # (item_id, parts_done, sent JSON | None)
    reschedule: Callable[..., Any]  # (item_id, not_before, attempts, error)
    dead_letter: Callable[..., Any]  # (item_id, reason, now) -> bool
    dlq_retry: Callable[..., Any]  # (ids | None, now) -> int
    dlq_drop: Callable[..., Any]  # (ids | None) -> int
    map_put: Callable[..., Any]  # (origin_id, lane, native_ids, now)
    kv_set: Callable[..., Any]  # (namespace, key, value JSON, now)
    kv_delete: Callable[..., Any]  # (namespace, key)
    audit: Callable[..., Any]  # (now, actor, action, detail JSON)
    probe: Callable[..., Any]  # () - writes a page but changes nothing (the outage probe)
    prune: Callable[..., Any]  # (table, before, limit) -> rows (``trace``: messages) deleted
    prune_excess: Callable[..., Any]  # (table, keep, limit) -> rows deleted
    map_touch: Callable[..., Any]  # (origin_ids, now)

    @classmethod
    def named(cls, namespace: Mapping[str, Any]) -> Self:
        """The operations of a backend module that names each ``_op_<field>``."""
        return cls(**{f.name: namespace[f"_op_{f.name}"] for f in dataclasses.fields(cls)})


class StoreBackend:
    """The part of a store backend that does not depend on its database (see the module docstring).

    A backend sets ``write_ops``, ``prune_tables``, ``excess_tables``, ``logger`` and the two outage
    log lines, and provides ``_submit(op, *args)`` (queue an operation for its writer; returns the
    future of its commit), ``_write(op, *args)`` (the same, awaited), ``clock``, ``probe_interval``,
    ``_label`` (how the log names the store), ``purge()``, ``_purge_failed(e)``, ``trace_resolve`` and
    ``_trace_rows(...)`` (the summaries ``trace_search`` filters); it calls :meth:`_init_state` in
    its ``__init__``.
    """

    write_ops: ClassVar[WriteOps]
    #: the tables ``prune`` / ``prune_excess`` know (keys; the values are the backend's SQL)
    prune_tables: ClassVar[Mapping[str, Any]]
    excess_tables: ClassVar[Mapping[str, Any]]
    logger: ClassVar[logging.Logger]  # the backend module's
    #: ERROR lines when an outage starts and while it lasts (``%(where)s``, ``%(problem)s``,
    #: ``%(secs)``, ``%(refused)``)
    outage_began: ClassVar[str]
    outage_lasts: ClassVar[str]

    clock: Callable[[], float]
    probe_interval: float

    def _init_state(self) -> None:
        """The queue, the background tasks, the counters and the outage state, all empty."""
        self._pending: list[Op] = []
        self._wake: asyncio.Event | None = None
        self._purger: asyncio.Task[None] | None = None
        self._closing = False
        # counters for metrics
        self.batches = 0
        self.ops = 0
        self.op_errors = 0
        self.batch_errors = 0
        self.outages = 0  # times the database became unwritable (or unreachable)
        # outage state: the cause, when it began (monotonic), writes refused, last log line (monotonic)
        self._problem: str | None = None
        self._outage_since = 0.0
        self._refused = 0
        self._outage_logged = 0.0
        self._prober: asyncio.Task[None] | None = None

    if TYPE_CHECKING:  # provided by each backend
        _label: str

        def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]: ...
        async def _write(self, fn: Callable[..., Any], *args: Any) -> Any: ...
        async def open(self) -> None: ...
        async def close(self) -> None: ...
        async def purge(self, now: float | None = None) -> dict[str, int]: ...
        def _purge_failed(self, e: Exception) -> None: ...
        async def trace_resolve(self, key: str, limit: int = 20) -> list[str]: ...
        async def _trace_rows(self, *, route: str | None, chat: str | None, sender: str | None,
                              since: float | None, until: float | None, ids: list[str] | None,
                              limit: int) -> list[dict[str, Any]]: ...

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def write_problem(self) -> str | None:
        """None while writes commit; otherwise why the database cannot be written (or reached): the
        disk is full, the server is down... Cleared by the next batch that commits (a probe write
        every ``probe_interval`` seconds tries)."""
        return self._problem

    # -- the writer's side ------------------------------------------------------------------------------
    async def _stop_tasks(self) -> None:
        """Closing: stop the pruning task and the outage probe, then wake the writer to drain the queue."""
        self._closing = True
        for task in (self._purger, self._prober):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._purger = self._prober = None
        assert self._wake is not None
        self._wake.set()

    @staticmethod
    def _fail(batch: list[Op], error: Callable[[], BaseException]) -> None:
        """Nothing of ``batch`` is committed: each waiting caller gets ``error()``."""
        for _fn, _args, fut in batch:
            if not fut.done():
                fut.set_exception(error())

    def _settle(self, batch: list[Op], results: list[tuple[bool, Any]]) -> None:
        """``batch`` committed: the outage (if any) is over, and each caller gets its result (or the
        exception of its own operation, rolled back alone)."""
        if self._problem is not None:
            self._recovered()
        self.batches += 1
        self.ops += len(batch)
        for (_fn, _args, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():  # the caller was cancelled; the write is committed anyway
                continue
            if ok:
                fut.set_result(value)
            else:
                self.op_errors += 1
                fut.set_exception(value)

    def _outage(self, problem: str, n: int) -> None:
        """The database cannot be written or reached (``n`` writes refused) because of ``problem``:
        start or continue the outage; log it once, then at most every OUTAGE_LOG_EVERY seconds."""
        now = time.monotonic()
        self._refused += n
        began = self._problem is None
        self._problem = problem
        if began:
            self._outage_since = self._outage_logged = now
            self.outages += 1
            self.logger.error(self.outage_began, self._outage_facts(now))
            if not self._closing and (self._prober is None or self._prober.done()):
                self._prober = asyncio.create_task(self._probe_loop(), name="store-probe")
        elif now - self._outage_logged >= OUTAGE_LOG_EVERY:
            self._outage_logged = now
            self.logger.error(self.outage_lasts, self._outage_facts(now))

    def _outage_facts(self, now: float) -> dict[str, Any]:
        return {"where": self._label, "problem": self._problem, "secs": now - self._outage_since,
                "refused": self._refused}

    def _recovered(self) -> None:
        self.logger.warning("store %s writes again after %.0fs (%d writes were refused meanwhile)", self._label,
                    time.monotonic() - self._outage_since, self._refused)
        self._problem = None
        self._refused = 0

    async def _probe_loop(self) -> None:
        """While the database cannot be written, try a small write now and then: the outage ends even
        when nothing else writes (a load balancer stops sending to a gateway that is not ready)."""
        while self._problem is not None and not self._closing:
            await asyncio.sleep(self.probe_interval)
            if self._problem is None or self._closing:
                return
            try:
                await self._write(self.write_ops.probe)
            except (StoreUnavailable, RuntimeError):  # still failing (logged by the writer) / closing
                pass

    async def _purge_loop(self, every: float) -> None:
        """The background pruning task: ``purge()`` every ``every`` seconds."""
        while True:
            try:
                await self.purge()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                self._purge_failed(e)
            await asyncio.sleep(every)

    def stats(self) -> dict[str, int]:
        return {
            "batches": self.batches, "ops": self.ops, "op_errors": self.op_errors,
            "batch_errors": self.batch_errors, "pending": self._queued(),
            "outages": self.outages, "unwritable": int(self._problem is not None),
        }

    def _queued(self) -> int:
        return len(self._pending)

    # -- the Store protocol's writes ---------------------------------------------------------------------
    async def accept(self, message_id: str, items: Sequence[OutboxItem]) -> bool:
        now = self.clock()
        return await self._write(self.write_ops.accept, message_id, now, item_rows(items, now))

    async def accept_mapped(self, message_id: str, items: Sequence[OutboxItem],
                            maps: Sequence[tuple[str, Sequence[str]]]) -> bool:
        """``accept``, and when the id is new also ``map_put(message_id, lane, native_ids)`` for each
        ``(lane, native_ids)`` of ``maps``, in the same transaction (beyond the protocol: one commit
        per message instead of two; the pipeline records the origin's native id with it)."""
        now = self.clock()
        return await self._write(self.write_ops.accept_mapped, message_id, now, item_rows(items, now),
                                 [(lane, [str(n) for n in ids]) for lane, ids in maps])

    async def accept_many(
        self, entries: Sequence[tuple[str, Sequence[OutboxItem], Sequence[tuple[str, Sequence[str]]]]],
    ) -> list[bool | BaseException]:
        """``accept_mapped(message_id, items, maps)`` of each entry, queued at once and in order (a topic
        poller's page: the messages share a group commit and keep their order in the outbox). Each is
        its own operation, so one that fails fails alone. Returns, in order, True (accepted), False
        (the id was seen before) or the exception of that message's write."""
        now = self.clock()
        op = self.write_ops.accept_mapped
        futs: list[asyncio.Future[Any]] = []
        try:
            for message_id, items, maps in entries:
                futs.append(self._submit(op, message_id, now, item_rows(items, now),
                                         [(lane, [str(n) for n in ids]) for lane, ids in maps]))
        except BaseException:
            await asyncio.gather(*futs, return_exceptions=True)  # those queued still commit (or fail) alone
            raise
        return list(await asyncio.gather(*futs, return_exceptions=True))

    async def enqueue(self, items: Sequence[OutboxItem]) -> list[int]:
        """Enqueue ``items`` without an inbox entry (internal notices, replies to commands). Returns ids."""
        now = self.clock()
        return await self._write(self.write_ops.enqueue, item_rows(items, now))

    async def progress(self, item_id: int, parts_done: int, *, sent: Sequence[Sequence[str]] | None = None) -> None:
        """Record that ``parts_done`` parts are out; ``sent`` (optional, beyond the protocol): their
        native ids, one list per part, handed back by ``sent_parts`` when the item resumes."""
        await self._write(
            self.write_ops.progress, item_id, parts_done, None if sent is None else dumps([list(p) for p in sent])
        )

    async def reschedule(self, item_id: int, *, not_before: float, attempts: int, error: str) -> None:
        await self._write(self.write_ops.reschedule, item_id, not_before, attempts, error)

    async def dead_letter(self, item_id: int, reason: str) -> None:
        if not await self._write(self.write_ops.dead_letter, item_id, reason, self.clock()):
            self.logger.warning("dead_letter: outbox item %s is gone (already delivered or dropped)", item_id)

    async def dlq_retry(self, ids: Sequence[int] | None = None) -> int:
        return await self._write(self.write_ops.dlq_retry, None if ids is None else list(ids), self.clock())

    async def dlq_drop(self, ids: Sequence[int] | None = None) -> int:
        return await self._write(self.write_ops.dlq_drop, None if ids is None else list(ids))

    async def map_put(self, origin_id: str, lane: str, native_ids: Sequence[str]) -> None:
        await self._write(self.write_ops.map_put, origin_id, lane, list(native_ids), self.clock())

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        await self._write(self.write_ops.kv_set, namespace, key, dumps(value), self.clock())

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._write(self.write_ops.kv_delete, namespace, key)

    async def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        await self._write(self.write_ops.audit, self.clock(), actor, action, dumps(detail))

    # -- retention's writes (the policy: retention.py) -------------------------------------------------------
    async def prune(self, table: str, before: float, limit: int) -> int:
        """Delete at most ``limit`` rows of ``table`` (``inbox``, ``message_map``, ``audit``,
        ``dead_letters``, ``trace``) whose age (seen_at, last_used, ts, failed_at, a message's last
        trace event) is < ``before``, oldest first. ``trace`` counts messages (their summary,
        events and index rows go together)."""
        if table not in self.prune_tables:
            raise ValueError(f"no retention for table {table!r}")
        return await self._write(self.write_ops.prune, table, float(before), int(limit))

    async def prune_excess(self, table: str, keep: int, limit: int) -> int:
        """Delete at most ``limit`` of the oldest rows of ``table`` (``dead_letters``) beyond the newest ``keep``."""
        if table not in self.excess_tables:
            raise ValueError(f"no row cap for table {table!r}")
        return await self._write(self.write_ops.prune_excess, table, int(keep), int(limit))

    async def map_touch(self, origin_ids: str | Sequence[str]) -> None:
        """A reply or edit was resolved through the message map of ``origin_ids``: their rows
        (every lane) count as used now, so the reply window starts again."""
        ids = [origin_ids] if isinstance(origin_ids, str) else list(origin_ids)
        if ids:
            await self._write(self.write_ops.map_touch, ids, self.clock())

    # -- the message trace's search -------------------------------------------------------------------------
    async def trace_search(self, *, q: str | None = None, route: str | None = None, chat: str | None = None,
                           sender: str | None = None, status: str | None = None, since: float | None = None,
                           until: float | None = None, limit: int = 50,
                           also: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Message summaries, newest first: those ``q`` resolves to (``trace_resolve``) plus ``also``
        when either is given, filtered by route, chat, sender, time and status."""
        ids: list[str] | None = None
        if q or also:
            found_ids = await self.trace_resolve(q, limit=max(limit, 20)) if q else []
            ids = list(dict.fromkeys([*found_ids, *also]))
            if not ids:
                return []
        found = await self._trace_rows(route=route, chat=chat, sender=sender, since=since, until=until, ids=ids,
                                       limit=limit if not status else 10 * limit)
        if status:
            found = [s for s in found if s["status"] == status][:limit]
        return found
