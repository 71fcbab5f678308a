"""PostgreSQL backend of the :class:`~claudemesh_gateway.store.base.Store` protocol (asyncpg).

Several gateway replicas share one database through it; this module keeps the contract of
:mod:`.sqlite` (same methods, same results, the same tests run against both).

Layout
------
* A connection **pool** (asyncpg). Reads take any connection and see the last committed state.
* One **writer** task (``writers``), as in the SQLite backend: writes queue up, the writer takes
  everything queued, runs it in ONE transaction on a pooled connection and commits, then resolves
  the futures (group commit: one WAL flush for many messages). ``writers > 1`` lets batches commit
  in parallel: each task's own writes still commit in order (callers await them; ``accept_many`` then
  writes its messages one after the other), lease writes all
  go through the first writer in submission order, but writes of different tasks may commit in
  either order (of a message id accepted twice at once, either copy may be the one enqueued). An operation that raises a data error (a constraint, a
  bad value) makes the writer roll back and run the batch again with a SAVEPOINT around each
  operation, so only that operation fails. A deadlock or serialization failure (two replicas
  inserting the same ids in a different order) retries the whole batch. A lost connection fails
  the batch's futures (nothing is acknowledged that is not committed); the pool reconnects for
  the next batch.
* **Outage**, as in the SQLite backend: while the server cannot be reached or written (down,
  shutting down, refusing connections, read-only, disk full: :func:`is_unavailable`) a batch fails
  as a whole with :class:`~claudemesh_gateway.errors.StoreUnavailable`, and so does a read that
  cannot reach it. :attr:`PostgresStore.write_problem` names the cause until a batch commits again
  (``/-/ready`` reports it, the delivery engine sends nothing), the outage is logged once when it
  starts, at most once a minute while it lasts and once when it ends, and a small probe write every
  ``probe_interval`` seconds notices the recovery even when nothing else writes.
* Dedup is ``INSERT ... ON CONFLICT DO NOTHING`` on the inbox ledger: of two replicas accepting
  the same message id, exactly one enqueues it.

Schema
------
Versioned migrations (``MIGRATIONS``), applied at ``open`` under a PostgreSQL advisory lock so
several replicas starting together migrate once; the version lives in ``claudemesh_schema``.

The DSN is a secret (it may hold a password): it is never logged and never put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..errors import StartupError, StoreUnavailable
from . import backend as common
from .base import DeadLetter, OutboxItem, TraceEvent
from .jsonio import loads as _loads
from .retention import DAY
from .tracerows import TRACE_EVENTS_MAX, merge_events, resolve_keys, trace_document, trace_summary

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SCHEMA_VERSION", "PostgresStore", "describe_dsn", "dsn_secrets", "is_unavailable", "probe_schema"]

log = logging.getLogger(__name__)

# pg_advisory_lock keys (bigint): fixed, so every replica of every version agrees on them
MIGRATION_LOCK = 0x636D_6777_0001  # "cmgw" 1: schema migrations
DELIVERY_LOCK = 0x636D_6777_0002  # "cmgw" 2: the single deliverer

# -- schema ----------------------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS inbox (
    id        TEXT PRIMARY KEY,
    seen_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_seen_at ON inbox(seen_at);

CREATE TABLE IF NOT EXISTS outbox (
    id          BIGSERIAL PRIMARY KEY,
    lane        TEXT NOT NULL,
    route       TEXT NOT NULL,
    destination TEXT NOT NULL,
    message     TEXT NOT NULL,
    options     TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  DOUBLE PRECISION NOT NULL DEFAULT 0,
    progress    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    enqueued_at DOUBLE PRECISION NOT NULL,
    sent        TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox(lane, id);

CREATE TABLE IF NOT EXISTS dead_letters (
    id          BIGINT PRIMARY KEY,
    lane        TEXT NOT NULL,
    route       TEXT NOT NULL,
    destination TEXT NOT NULL,
    message     TEXT NOT NULL,
    options     TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    not_before  DOUBLE PRECISION NOT NULL,
    progress    INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    sent        TEXT NOT NULL DEFAULT '[]',
    reason      TEXT NOT NULL,
    failed_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_failed_at ON dead_letters(failed_at);

CREATE TABLE IF NOT EXISTS message_map (
    origin_id  TEXT NOT NULL,
    lane       TEXT NOT NULL,
    part       INTEGER NOT NULL,
    native_id  TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (origin_id, lane, part)
);
CREATE INDEX IF NOT EXISTS message_map_native ON message_map(native_id, lane);
CREATE INDEX IF NOT EXISTS message_map_created ON message_map(created_at);

CREATE TABLE IF NOT EXISTS kv (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (namespace, key)
);

CREATE TABLE IF NOT EXISTS audit (
    id     BIGSERIAL PRIMARY KEY,
    ts     DOUBLE PRECISION NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
"""

# v2: coordination between replicas. Times are the database's clock (epoch seconds), so replicas
# with skewed clocks agree on who holds what.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS token_buckets (
    name       TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
"""

# v3: the message trace (core.trace), as in the SQLite backend: one row per message (summary
# columns + its events appended as JSON lines) and an index of the keys it is found by (native ids,
# "#<outbox id>"; the row's ``keys`` column lists them again, so a purge deletes exactly those rows)
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS trace_messages (
    message_id TEXT PRIMARY KEY,
    first_at   DOUBLE PRECISION NOT NULL,
    last_at    DOUBLE PRECISION NOT NULL,
    origin     TEXT,
    sender     TEXT,
    routes     TEXT,
    lanes      TEXT,
    dropped    TEXT,
    dests      INTEGER NOT NULL DEFAULT 0,
    delivered  INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0,
    dead       INTEGER NOT NULL DEFAULT 0,
    events     TEXT NOT NULL DEFAULT '',
    keys       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS trace_messages_last ON trace_messages(last_at);
CREATE TABLE IF NOT EXISTS trace_keys (
    key        TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (key, message_id)
);
"""

# v4: retention (core/store/retention.py): a message-map row lives for the reply window after its
# last use (delivery, or a reply or edit resolved through it: map_touch), not after its creation.
# The same step as SQLite's v4; version 3 is the message trace's number (SQLite's v3), which this
# backend's migrations keep for it so the two schemas stay numbered alike.
_SCHEMA_V4 = """
ALTER TABLE message_map ADD COLUMN IF NOT EXISTS last_used DOUBLE PRECISION NOT NULL DEFAULT 0;
UPDATE message_map SET last_used = created_at WHERE last_used = 0;
DROP INDEX IF EXISTS message_map_created;
CREATE INDEX IF NOT EXISTS message_map_last_used ON message_map(last_used);
"""

# (target version, SQL). Append new steps; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, _SCHEMA_V1),
    (2, _SCHEMA_V2),
    (3, _SCHEMA_V3),
    (4, _SCHEMA_V4),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS claudemesh_schema (singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),"
    " version INTEGER NOT NULL)"
)


async def _current_version(c: asyncpg.Connection) -> int:
    if await c.fetchval("SELECT to_regclass('claudemesh_schema')") is None:
        return 0
    v = await c.fetchval("SELECT version FROM claudemesh_schema")
    return int(v or 0)


async def migrate(c: asyncpg.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` under the migration advisory lock, one
    transaction per step. Returns the version found. Raises StartupError for a newer schema."""
    await c.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        current = await _current_version(c)
        common.refuse_newer(current, SCHEMA_VERSION)
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            async with c.transaction():
                await c.execute(_VERSION_TABLE)
                await c.execute(sql)
                await c.execute(
                    "INSERT INTO claudemesh_schema (singleton, version) VALUES (TRUE, $1)"
                    " ON CONFLICT (singleton) DO UPDATE SET version = excluded.version", version,
                )
            log.info("store schema migrated to version %d", version)
        return current
    finally:
        await c.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


# -- DSN handling --------------------------------------------------------------------------------------------

def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The DSN and its password, for the log redaction filter (a DSN is never logged whole)."""
    out = [dsn]
    with contextlib.suppress(ValueError):
        pw = urlsplit(dsn).password
        if pw:
            out += [pw, unquote(pw)]
    for part in dsn.split():  # key=value form: password=...
        if part.startswith("password="):
            out.append(part.removeprefix("password=").strip("'"))
    return tuple(dict.fromkeys(v for v in out if v))


def describe_dsn(dsn: str) -> str:
    """host:port/database of a DSN, without user or password (for logs and errors)."""
    try:
        u = urlsplit(dsn)
        host = u.hostname or "localhost"
        port = f":{u.port}" if u.port else ""
        return f"{host}{port}{u.path or ''}"
    except ValueError:
        return "the configured database"


def _error_text(exc: BaseException, dsn: str) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for secret in dsn_secrets(dsn):
        text = text.replace(secret, "***")
    return text


class _PoolFloorFilter(logging.Filter):
    """asyncpg's pool logs a WARNING with a traceback each time it fails to reconnect its idle
    connections (every 1..60 s while the server is down). The store logs the outage itself, once
    and rate-limited, so those lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to restore the pool connection floor")


_POOL_FLOOR_FILTER = _PoolFloorFilter()


def _import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as e:  # the optional extra is not installed
        raise StartupError(
            "[store] backend = \"postgres\" needs asyncpg: pip install 'claudemesh-gateway[postgres]'"
        ) from e
    pool_log = logging.getLogger("asyncpg.pool")
    if _POOL_FLOOR_FILTER not in pool_log.filters:
        pool_log.addFilter(_POOL_FLOOR_FILTER)
    return asyncpg


async def probe_schema(dsn: str, *, timeout: float = 10.0) -> int:
    """Connect once and return the schema version found (0: not created yet).
    Raises StartupError (with the cause, never the DSN) when the database cannot be reached."""
    asyncpg = _import_asyncpg()
    try:
        c = await asyncpg.connect(dsn, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - every way a connect fails is reported the same way
        raise StartupError(f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {_error_text(e, dsn)}") from None
    try:
        return await _current_version(c)
    finally:
        await c.close()


# -- write operations (run by the writer, inside the batch transaction) ---------------------------------------

_ROW_COLS = common.ROW_COLS
_OUTBOX_COLS = common.OUTBOX_COLS
_UNNEST = (
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],"
    " $7::float8[], $8::int[], $9::text[], $10::float8[]) WITH ORDINALITY AS r({cols}, ord) ORDER BY ord"
)
_INSERT_ROWS = (
    f"INSERT INTO outbox ({_ROW_COLS}) SELECT {_ROW_COLS} FROM ({_UNNEST.format(cols=_ROW_COLS)}) AS rows"
    " RETURNING id"
)
# inbox insert and outbox rows in one statement: the rows go in only when the id is new
_ACCEPT = (
    "WITH ins AS (INSERT INTO inbox (id, seen_at) VALUES ($11, $12) ON CONFLICT (id) DO NOTHING RETURNING 1),"
    f" o AS (INSERT INTO outbox ({_ROW_COLS}) SELECT {_ROW_COLS} FROM ({_UNNEST.format(cols=_ROW_COLS)}) AS rows"
    " WHERE EXISTS (SELECT 1 FROM ins) RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM ins)"
)
_ACCEPT_NONE = "INSERT INTO inbox (id, seen_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING 1"


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(10)]


async def _op_accept(c: asyncpg.Connection, message_id: str, now: float, rows: list[tuple[Any, ...]]) -> bool:
    if not rows:
        return await c.fetchval(_ACCEPT_NONE, message_id, now) is not None
    return bool(await c.fetchval(_ACCEPT, *_columns(rows), message_id, now))


# many accepts in one statement (the writer's fast path): inbox ids in, outbox rows of the ids that
# were new; returns those ids. $1/$2: ids and times per accept; $3: the accept each row belongs to.
_ACCEPT_MANY = (
    "WITH input AS (SELECT * FROM unnest($1::text[], $2::float8[]) WITH ORDINALITY AS t(id, seen_at, ord)),"
    " ins AS (INSERT INTO inbox (id, seen_at) SELECT id, seen_at FROM input ORDER BY ord"
    " ON CONFLICT (id) DO NOTHING RETURNING id),"
    " rows AS (SELECT * FROM unnest($3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
    " $9::int[], $10::float8[], $11::int[], $12::text[], $13::float8[]) WITH ORDINALITY"
    f" AS r(op, {_ROW_COLS}, ord)),"
    f" o AS (INSERT INTO outbox ({_ROW_COLS}) SELECT {_ROW_COLS} FROM rows"
    " WHERE (SELECT id FROM input WHERE input.ord = rows.op) IN (SELECT id FROM ins) ORDER BY rows.ord RETURNING 1)"
    " SELECT id FROM ins"
)


async def _accept_many(c: asyncpg.Connection, ops: list[tuple[Any, ...]]) -> list[bool]:
    """Run several ``_op_accept`` argument tuples (message_id, now, rows) as one statement. An id
    that appears twice is decided by its first accept; the later ones are duplicates either way."""
    first: dict[str, int] = {}
    ids, times, row_op, row_cols = [], [], [], []
    for k, (message_id, now, rows) in enumerate(ops):
        if message_id in first:
            continue
        first[message_id] = k
        ids.append(message_id)
        times.append(now)
        for row in rows:
            row_op.append(len(ids))  # 1-based ordinality of its accept
            row_cols.append(row)
    cols = _columns(row_cols)
    inserted = {r[0] for r in await c.fetch(_ACCEPT_MANY, ids, times, row_op, *cols)}
    return [first[m] == k and m in inserted for k, (m, _now, _rows) in enumerate(ops)]


async def _map_put_many(c: asyncpg.Connection, ops: list[tuple[Any, ...]]) -> list[None]:
    """Several ``_op_map_put`` argument tuples (origin_id, lane, native_ids, now) in two statements;
    of one (origin_id, lane) given twice the last wins, as when run one by one."""
    last: dict[tuple[str, str], tuple[list[str], float]] = {}
    for origin_id, lane, native_ids, now in ops:
        last.pop((origin_id, lane), None)
        last[(origin_id, lane)] = (native_ids, now)
    keys = list(last)
    await c.execute(
        "DELETE FROM message_map WHERE (origin_id, lane) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [k[0] for k in keys], [k[1] for k in keys],
    )
    cols: list[list[Any]] = [[], [], [], [], []]
    for (origin_id, lane), (native_ids, now) in last.items():
        for part, native in enumerate(native_ids):
            for col, v in zip(cols, (origin_id, lane, part, str(native), now), strict=True):
                col.append(v)
    if cols[0]:
        await c.execute(
            "INSERT INTO message_map (origin_id, lane, part, native_id, created_at, last_used)"
            " SELECT o, l, p, n, t, t FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::float8[])"
            " AS u(o, l, p, n, t)", *cols,
        )
    return [None] * len(ops)


_MANY: dict[Any, Any] = {}  # operation -> its "several at once" form (filled below)


async def _run_fast(c: asyncpg.Connection, ops: list[Any]) -> list[tuple[bool, Any]]:
    """Every operation of a batch in order; runs of consecutive accepts (or message-map writes) as
    one statement (or two) each."""
    results: list[tuple[bool, Any]] = []
    i = 0
    while i < len(ops):
        fn, args, _fut = ops[i]
        many = _MANY.get(fn)
        if many is not None:
            j = i
            while j < len(ops) and ops[j][0] is fn:
                j += 1
            if j - i > 1:
                results += [(True, r) for r in await many(c, [op[1] for op in ops[i:j]])]
                i = j
                continue
        results.append((True, await fn(c, *args)))
        i += 1
    return results


async def _op_enqueue(c: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> list[int]:
    if not rows:
        return []
    return [r[0] for r in await c.fetch(_INSERT_ROWS, *_columns(rows))]


async def _op_progress(c: asyncpg.Connection, item_id: int, parts_done: int, sent: str | None) -> None:
    if sent is None:
        await c.execute("UPDATE outbox SET progress = $1 WHERE id = $2", parts_done, item_id)
    else:
        await c.execute("UPDATE outbox SET progress = $1, sent = $2 WHERE id = $3", parts_done, sent, item_id)


async def _op_complete_many(c: asyncpg.Connection, ids: list[int]) -> None:
    await c.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)


async def _op_reschedule(c: asyncpg.Connection, item_id: int, not_before: float, attempts: int, error: str) -> None:
    await c.execute(
        "UPDATE outbox SET not_before = $1, attempts = $2, last_error = $3 WHERE id = $4",
        not_before, attempts, error, item_id,
    )


async def _op_dead_letter(c: asyncpg.Connection, item_id: int, reason: str, now: float) -> bool:
    rows = await c.fetch(
        f"WITH moved AS (DELETE FROM outbox WHERE id = $1 RETURNING {_OUTBOX_COLS}, sent)"
        f" INSERT INTO dead_letters ({_OUTBOX_COLS}, sent, reason, failed_at)"
        f" SELECT {_OUTBOX_COLS}, sent, $2, $3 FROM moved"
        " ON CONFLICT (id) DO UPDATE SET reason = excluded.reason, failed_at = excluded.failed_at RETURNING id",
        item_id, reason, now,
    )
    return bool(rows)


def _id_filter(ids: Sequence[int] | None, arg: int) -> tuple[str, tuple[Any, ...]]:
    if ids is None:
        return "", ()
    return f" WHERE id = ANY(${arg}::bigint[])", ([int(i) for i in ids],)


async def _op_dlq_retry(c: asyncpg.Connection, ids: Sequence[int] | None, now: float) -> int:
    if ids is not None and not ids:
        return 0
    where, args = _id_filter(ids, 2)
    # Same rules as the SQLite backend: back at the END of the lane under a new id, attempts and
    # errors afresh, enqueued_at = now, progress and the ids of parts already sent kept.
    rows = await c.fetch(
        f"WITH moved AS (DELETE FROM dead_letters{where} RETURNING *)"
        " INSERT INTO outbox (lane, route, destination, message, options, attempts, not_before,"
        " progress, sent, last_error, enqueued_at) SELECT lane, route, destination, message, options, 0, 0,"
        " progress, sent, '', $1 FROM moved ORDER BY id RETURNING id",
        now, *args,
    )
    return len(rows)


async def _op_dlq_drop(c: asyncpg.Connection, ids: Sequence[int] | None) -> int:
    if ids is not None and not ids:
        return 0
    where, args = _id_filter(ids, 1)
    return len(await c.fetch(f"DELETE FROM dead_letters{where} RETURNING id", *args))


async def _op_map_put(c: asyncpg.Connection, origin_id: str, lane: str, native_ids: list[str], now: float) -> None:
    await c.execute("DELETE FROM message_map WHERE origin_id = $1 AND lane = $2", origin_id, lane)
    if native_ids:
        await c.execute(
            "INSERT INTO message_map (origin_id, lane, part, native_id, created_at, last_used)"
            " SELECT $1, $2, ord - 1, n, $4, $4 FROM unnest($3::text[]) WITH ORDINALITY AS t(n, ord)",
            origin_id, lane, [str(n) for n in native_ids], now,
        )


async def _op_accept_mapped(c: asyncpg.Connection, message_id: str, now: float, rows: list[tuple[Any, ...]],
                            maps: list[tuple[str, list[str]]]) -> bool:
    if not await _op_accept(c, message_id, now, rows):
        return False
    for lane, native_ids in maps:
        await _op_map_put(c, message_id, lane, native_ids, now)
    return True


async def _accept_mapped_many(c: asyncpg.Connection, ops: list[tuple[Any, ...]]) -> list[bool]:
    """Several ``_op_accept_mapped`` argument tuples: the accepts as one statement, then the maps of
    the ids that were new as two."""
    accepted = await _accept_many(c, [(m, now, rows) for m, now, rows, _maps in ops])
    puts = [(m, lane, ids, now) for (m, now, _rows, maps), ok in zip(ops, accepted, strict=True) if ok
            for lane, ids in maps]
    if puts:
        await _map_put_many(c, puts)
    return accepted


async def _complete_many_many(c: asyncpg.Connection, ops: list[tuple[Any, ...]]) -> list[None]:
    """Several ``_op_complete_many`` calls (the engine removes each delivered item on its own, from
    many lanes at once) as one DELETE."""
    await _op_complete_many(c, [i for (ids,) in ops for i in ids])
    return [None] * len(ops)


_MANY.update({_op_accept: _accept_many, _op_accept_mapped: _accept_mapped_many, _op_map_put: _map_put_many,
              _op_complete_many: _complete_many_many})


async def _op_kv_set(c: asyncpg.Connection, ns: str, key: str, value: str, now: float) -> None:
    await c.execute(
        "INSERT INTO kv (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        ns, key, value, now,
    )


async def _op_kv_delete(c: asyncpg.Connection, ns: str, key: str) -> None:
    await c.execute("DELETE FROM kv WHERE namespace = $1 AND key = $2", ns, key)


async def _op_audit(c: asyncpg.Connection, now: float, actor: str, action: str, detail: str) -> None:
    await c.execute("INSERT INTO audit (ts, actor, action, detail) VALUES ($1, $2, $3, $4)", now, actor, action, detail)


_PURGE = {  # table -> a DELETE of at most $2 expired rows (chunks keep each commit short)
    "inbox": "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox WHERE seen_at < $1 LIMIT $2) RETURNING 1",
    "message_map": "DELETE FROM message_map WHERE (origin_id, lane, part) IN"
                   " (SELECT origin_id, lane, part FROM message_map WHERE last_used < $1"
                   " ORDER BY last_used LIMIT $2) RETURNING 1",
    "audit": "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE ts < $1 ORDER BY ts LIMIT $2) RETURNING 1",
    "dead_letters": "DELETE FROM dead_letters WHERE id IN"
                    " (SELECT id FROM dead_letters WHERE failed_at < $1 ORDER BY failed_at LIMIT $2) RETURNING 1",
    # the trace: whole messages whose last event is older than the retention (events, index, summary)
    "trace": "DELETE FROM trace_messages WHERE message_id IN"
             " (SELECT message_id FROM trace_messages WHERE last_at < $1 ORDER BY last_at LIMIT $2)"
             " RETURNING message_id, keys",
}
_PURGE_EXCESS = {  # table -> a DELETE of the $1 oldest rows
    "dead_letters": "DELETE FROM dead_letters WHERE id IN"
                    " (SELECT id FROM dead_letters ORDER BY failed_at, id LIMIT $1) RETURNING 1",
}


async def _op_prune(c: asyncpg.Connection, table: str, before: float, limit: int) -> int:
    if table != "trace":
        return len(await c.fetch(_PURGE[table], before, limit))
    gone = await c.fetch(_PURGE["trace"], before, limit)
    pairs = [(k, r[0]) for r in gone for k in r[1].split("\n") if k]
    if pairs:
        await c.execute(
            "DELETE FROM trace_keys WHERE (key, message_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [p[0] for p in pairs], [p[1] for p in pairs],
        )
    return len(gone)


# -- message trace (core.trace) ----------------------------------------------------------------------------

_TRACE_UPSERT = (
    "INSERT INTO trace_messages AS t (message_id, first_at, last_at, origin, sender, routes, lanes, dropped,"
    " dests, delivered, failed, dead, events, keys) SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[],"
    " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int[], $10::int[], $11::int[], $12::int[],"
    " $13::text[], $14::text[]) ON CONFLICT (message_id) DO UPDATE SET"
    " first_at = LEAST(t.first_at, excluded.first_at), last_at = GREATEST(t.last_at, excluded.last_at),"
    " origin = COALESCE(t.origin, excluded.origin), sender = COALESCE(t.sender, excluded.sender),"
    " routes = COALESCE(t.routes, excluded.routes), lanes = COALESCE(t.lanes, excluded.lanes),"
    " dropped = COALESCE(excluded.dropped, t.dropped), dests = t.dests + excluded.dests,"
    " delivered = t.delivered + excluded.delivered, failed = t.failed + excluded.failed,"
    " dead = GREATEST(0, t.dead + excluded.dead), keys = t.keys || excluded.keys,"
    f" events = CASE WHEN length(t.events) >= {TRACE_EVENTS_MAX} THEN t.events ELSE t.events || excluded.events END"
)


def _pg_text(v: Any) -> Any:
    """PostgreSQL text holds no NUL character (a vendor id or sender name might): replaced."""
    return v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v


async def _op_trace_write(c: asyncpg.Connection, rows: list[list[Any]], keys: list[tuple[str, str]]) -> None:
    """``rows``: one upsert per message (sorted by id: replicas writing the same messages lock them in
    one order), then the index rows."""
    await c.execute(_TRACE_UPSERT, *_columns_n(rows, 14))
    if keys:
        await c.execute(
            "INSERT INTO trace_keys (key, message_id) SELECT * FROM unnest($1::text[], $2::text[])"
            " ON CONFLICT DO NOTHING", [k[0] for k in keys], [k[1] for k in keys],
        )


def _columns_n(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(n)]


async def _op_prune_excess(c: asyncpg.Connection, table: str, keep: int, limit: int) -> int:
    over = int(await c.fetchval(f"SELECT count(*) FROM {table}")) - keep
    if over <= 0:
        return 0
    return len(await c.fetch(_PURGE_EXCESS[table], min(over, limit)))


async def _op_map_touch(c: asyncpg.Connection, origin_ids: list[str], now: float) -> None:
    await c.execute("UPDATE message_map SET last_used = $2 WHERE origin_id = ANY($1::text[]) AND last_used < $2",
                    origin_ids, now)


async def _op_noop(c: asyncpg.Connection) -> None:
    return None


async def _op_probe(c: asyncpg.Connection) -> None:
    """A write that changes nothing but still writes a row version (the outage probe)."""
    await c.execute("UPDATE claudemesh_schema SET version = version")


_NOW = "extract(epoch from clock_timestamp())::float8"


async def _op_lease_acquire(c: asyncpg.Connection, names: list[str], owner: str, ttl: float) -> list[str]:
    # take a free or expired lease, renew our own; another owner's live lease is left alone
    rows = await c.fetch(
        "INSERT INTO leases (name, owner, expires_at, acquired_at)"
        f" SELECT n, $2, t.ts + $3, t.ts FROM unnest($1::text[]) AS n, (SELECT {_NOW} AS ts) AS t"
        " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at,"
        " acquired_at = CASE WHEN leases.owner = excluded.owner THEN leases.acquired_at ELSE excluded.acquired_at END"
        " WHERE leases.owner = excluded.owner OR leases.expires_at < excluded.acquired_at"
        " RETURNING name",
        sorted(set(names)), owner, ttl,
    )
    return [r[0] for r in rows]


async def _op_lease_release(c: asyncpg.Connection, names: list[str], owner: str) -> int:
    return len(await c.fetch(
        "DELETE FROM leases WHERE name = ANY($1::text[]) AND owner = $2 RETURNING 1", names, owner))


async def _op_bucket_take(c: asyncpg.Connection, name: str, burst: float, rate: float) -> float:
    await c.execute(
        f"INSERT INTO token_buckets (name, tokens, updated_at) VALUES ($1, $2, {_NOW}) ON CONFLICT (name) DO NOTHING",
        name, burst,
    )
    r = await c.fetchrow(f"SELECT tokens, updated_at, {_NOW} FROM token_buckets WHERE name = $1 FOR UPDATE", name)
    tokens, updated, now = r[0], r[1], r[2]
    avail = min(burst, tokens + max(0.0, now - updated) * rate)
    if avail >= 1.0:
        avail -= 1.0
        wait = 0.0
    else:
        wait = (1.0 - avail) / rate if rate > 0 else 60.0
    await c.execute("UPDATE token_buckets SET tokens = $2, updated_at = $3 WHERE name = $1", name, avail,
                    max(now, updated))
    return wait


async def _op_bucket_drain(c: asyncpg.Connection, name: str) -> None:
    await c.execute(f"UPDATE token_buckets SET tokens = LEAST(tokens, 0), updated_at = GREATEST(updated_at, {_NOW})"
                    " WHERE name = $1", name)


_DEADLOCK_RETRIES = 12


# -- the store ------------------------------------------------------------------------------------------------

class PostgresStore(common.StoreBackend):
    """The durable store on PostgreSQL. See the module docstring for the design.

    :param dsn: a libpq-style DSN (``postgresql://user:pass@host:5432/db``); a secret.
    :param min_pool, max_pool: connection pool bounds.
    :param connect_timeout: seconds for one connection attempt.
    :param inbox_ttl, map_ttl, audit_ttl, trace_ttl, dead_letter_ttl, purge_interval, max_batch, probe_interval, clock:
        as for SqliteStore.
    """

    backend = "postgres"
    write_ops = common.WriteOps.named(globals())
    logger = log
    outage_began = ("store %(problem)s; writes are refused (sources are told to retry) and the gateway reports"
                    " not ready until it answers again")
    outage_lasts = "store still unavailable after %(secs).0fs (%(refused)d writes refused): %(problem)s"

    # the tables retention prunes (StoreBackend.prune). Its hourly ``purge`` deletes by the
    # [retention] windows; the background pass and row cap are SQLite's.
    prune_tables = _PURGE
    excess_tables = _PURGE_EXCESS

    def __init__(
        self,
        dsn: str,
        *,
        min_pool: int = 1,
        max_pool: int = 8,
        connect_timeout: float = 10.0,
        inbox_ttl: float = 10 * DAY,
        map_ttl: float = 30 * DAY,
        audit_ttl: float = 90 * DAY,
        trace_ttl: float = 7 * DAY,
        dead_letter_ttl: float = 30 * DAY,
        purge_interval: float = 3600.0,
        max_batch: int = 2000,
        writers: int = 1,
        probe_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not dsn:
            raise ValueError("PostgresStore needs a DSN")
        if inbox_ttl < common.MIN_INBOX_TTL:
            raise ValueError("inbox_ttl must be at least 8 days (vendors and meshes redeliver late)")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if writers < 1:
            raise ValueError("writers must be >= 1")
        if not 1 <= min_pool <= max_pool:
            raise ValueError("need 1 <= min_pool <= max_pool")
        if trace_ttl <= 0:
            raise ValueError("trace_ttl must be > 0")
        if probe_interval <= 0:
            raise ValueError("probe_interval must be > 0")
        self._dsn = dsn
        self.where = describe_dsn(dsn)  # host:port/db, safe to show
        self.min_pool = min_pool
        self.max_pool = max_pool
        self.connect_timeout = connect_timeout
        self.inbox_ttl = inbox_ttl
        self.map_ttl = map_ttl
        self.audit_ttl = audit_ttl
        self.trace_ttl = trace_ttl
        self.dead_letter_ttl = dead_letter_ttl
        self.purge_interval = purge_interval
        self.max_batch = max_batch
        self.probe_interval = probe_interval
        self.clock = clock
        self._pool: asyncpg.Pool | None = None
        self._ordered: list[common.Op] = []  # lease writes: one writer, submission order
        self._writers: list[asyncio.Task[None]] = []
        self.writers = max(1, min(writers, max_pool - 1))  # readers need a connection too
        self._lock_conn: asyncpg.Connection | None = None
        self._init_state()
        self.batch_retries = 0

    @property
    def _label(self) -> str:
        return f"PostgreSQL {self.where}"

    def __repr__(self) -> str:  # never the DSN
        return f"PostgresStore({self.where})"

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, migrate (under the advisory lock), start the writer. Raises StartupError."""
        if self._pool is not None:
            return
        asyncpg = _import_asyncpg()
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=self.min_pool, max_size=self.max_pool, timeout=self.connect_timeout,
                command_timeout=None,
            )
        except Exception as e:  # noqa: BLE001 - reported without the DSN
            raise StartupError(
                f"cannot open the store at PostgreSQL {self.where}: {_error_text(e, self._dsn)}") from None
        try:
            async with pool.acquire() as c:
                await migrate(c)
        except StartupError:
            await pool.close()
            raise
        except Exception as e:  # noqa: BLE001
            await pool.close()
            raise StartupError(
                f"cannot migrate the store at PostgreSQL {self.where}: {_error_text(e, self._dsn)}") from None
        self._pool = pool
        self._closing = False
        self._wake = asyncio.Event()
        self._writers = [asyncio.create_task(self._writer_loop(first=i == 0), name=f"store-writer-{i}")
                         for i in range(self.writers)]
        if self.purge_interval > 0:
            self._purger = asyncio.create_task(self._purge_loop(self.purge_interval), name="store-purge")
        log.info("store opened: PostgreSQL %s", self.where)

    async def close(self) -> None:
        await self.release_delivery_lock()
        if self._pool is None:
            return
        await self._stop_tasks()
        if self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)  # drains what is queued
            self._writers = []
        pool, self._pool = self._pool, None
        try:
            await asyncio.wait_for(pool.close(), 10)
        except (TimeoutError, Exception):  # noqa: BLE001 - a dead server: drop the connections
            pool.terminate()
        log.info("store closed: PostgreSQL %s", self.where)

    # -- single deliverer ------------------------------------------------------------------------------------
    async def acquire_delivery_lock(self) -> None:
        """Claim the right to deliver from this database: a session advisory lock held on a
        connection of its own. Raises StartupError when another process holds it."""
        if self._lock_conn is not None:
            return
        asyncpg = _import_asyncpg()
        try:
            c = await asyncpg.connect(self._dsn, timeout=self.connect_timeout)
        except Exception as e:  # noqa: BLE001
            raise StartupError(f"cannot connect to PostgreSQL {self.where}: {_error_text(e, self._dsn)}") from None
        if not await c.fetchval("SELECT pg_try_advisory_lock($1)", DELIVERY_LOCK):
            await c.close()
            raise StartupError(f"another claudemesh-gateway is already delivering from PostgreSQL {self.where}")
        self._lock_conn = c

    async def release_delivery_lock(self) -> None:
        c, self._lock_conn = self._lock_conn, None
        if c is not None:
            try:
                await asyncio.wait_for(c.close(), 5)  # closing the session drops the lock
            except Exception:  # noqa: BLE001
                c.terminate()

    # -- plumbing --------------------------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Awaitable[Any]], *args: Any, ordered: bool = False) -> asyncio.Future[Any]:
        """Queue a write. ``ordered`` writes (leases) are all run by the first writer, so they
        commit in the order they were submitted whichever task submitted them."""
        if self._pool is None or self._closing:
            raise RuntimeError("the store is not open")
        if self._writers and all(w.done() for w in self._writers):
            raise RuntimeError("the store's writer task has stopped; see the log")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        (self._ordered if ordered else self._pending).append((fn, args, fut))
        assert self._wake is not None
        self._wake.set()
        return fut

    async def _write(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await self._submit(fn, *args)

    async def _write_ordered(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await self._submit(fn, *args, ordered=True)

    async def _run_batch(self, ops: list[common.Op]) -> list[tuple[bool, Any]]:
        import asyncpg

        assert self._pool is not None
        isolated = False
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                async with self._pool.acquire() as c:
                    if isolated:
                        return await self._run_isolated(c, ops)
                    tr = c.transaction()
                    await tr.start()
                    try:
                        results = await _run_fast(c, ops)
                    except asyncpg.TransactionRollbackError:
                        await tr.rollback()
                        raise
                    except (asyncpg.PostgresError, ValueError, TypeError) as e:
                        if is_unavailable(e):  # every operation would fail the same way
                            raise
                        await tr.rollback()
                        isolated = True  # run again, one SAVEPOINT per operation
                        return await self._run_isolated(c, ops)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            await tr.rollback()
                        raise
                    await tr.commit()
                    return results
            except asyncpg.TransactionRollbackError:
                # a deadlock or serialization failure (replicas inserting the same ids in another
                # order): nothing of this batch is committed; wait a little and run it all again
                if attempt + 1 >= _DEADLOCK_RETRIES:
                    raise
                self.batch_retries += 1
                await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    async def _run_isolated(c: asyncpg.Connection, ops: list[common.Op]) -> list[tuple[bool, Any]]:
        import asyncpg

        results: list[tuple[bool, Any]] = []
        async with c.transaction():
            for fn, args, _fut in ops:
                try:
                    async with c.transaction():  # a SAVEPOINT inside the outer transaction
                        r = await fn(c, *args)
                except asyncpg.TransactionRollbackError:
                    raise  # the whole batch again (see _run_batch)
                except (asyncpg.PostgresError, ValueError, TypeError) as e:
                    if is_unavailable(e):
                        raise
                    results.append((False, e))
                else:
                    results.append((True, r))
        return results

    async def _writer_loop(self, first: bool = False) -> None:
        assert self._wake is not None
        while True:
            if not self._pending and not (first and self._ordered):
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch: list[common.Op] = []
            if first:  # the ordered writes, in submission order, ahead of the rest
                batch, self._ordered = self._ordered[: self.max_batch], self._ordered[self.max_batch :]
            room = self.max_batch - len(batch)
            if room > 0 and self._pending:
                batch += self._pending[:room]
                self._pending = self._pending[room:]
            try:
                results = await self._run_batch(batch)
            except asyncio.CancelledError:
                self._fail(batch, lambda: RuntimeError("store closed before the commit"))
                raise
            except Exception as e:  # noqa: BLE001 - connection lost, server down: nothing acknowledged
                self.batch_errors += 1
                text = _error_text(e, self._dsn)
                if is_unavailable(e):
                    self._outage(self._unavailable(text), len(batch))
                    err: Exception = StoreUnavailable(f"the store cannot write: {self._problem}")
                else:  # not the database's state (retries exhausted, a bug): this batch only
                    log.error("store: a batch of %d writes failed to commit: %s", len(batch), text)
                    err = RuntimeError(f"store: PostgreSQL {self.where}: a batch failed to commit: {text}")
                self._fail(batch, lambda err=err: err)
                if self._closing:
                    continue
                await asyncio.sleep(0.2)  # do not spin against a server that is down
                continue
            self._settle(batch, results)

    def _unavailable(self, text: str) -> str:
        """``write_problem`` while the server cannot be reached or written (``text``: the cause)."""
        return f"PostgreSQL {self.where} unavailable: {text}"

    @contextlib.asynccontextmanager
    async def _reading(self) -> Any:
        """Around a read: an unreachable database becomes StoreUnavailable (and starts the outage)."""
        if self._pool is None:
            raise RuntimeError("the store is not open")
        try:
            yield self._pool
        except Exception as e:
            if not is_unavailable(e):
                raise
            self._outage(self._unavailable(_error_text(e, self._dsn)), 0)
            raise StoreUnavailable(f"the store cannot be read: {self._problem}") from None

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._reading() as pool:
            return await pool.fetch(sql, *args)

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._reading() as pool:
            return await pool.fetchrow(sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._reading() as pool:
            return await pool.fetchval(sql, *args)

    def _purge_failed(self, e: Exception) -> None:
        """A purge raised ``e`` (the background task tries again next time)."""
        log.error("store purge failed; will retry: %s", _error_text(e, self._dsn))

    # -- health -------------------------------------------------------------------------------------------------
    async def ping(self, timeout: float = 5.0) -> bool:
        """True when the database answers a trivial query within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self._fetchval("SELECT 1") == 1
        except Exception:  # noqa: BLE001 - any failure is "not reachable"
            return False

    async def schema_version(self) -> int:
        async with self._acquire() as c:
            return await _current_version(c)

    @contextlib.asynccontextmanager
    async def _acquire(self) -> Any:
        async with self._reading() as pool, pool.acquire() as c:
            yield c

    # -- inbox ledger + outbox -----------------------------------------------------------------------------------
    async def accept_many(
        self, entries: Sequence[tuple[str, Sequence[OutboxItem], Sequence[tuple[str, Sequence[str]]]]],
    ) -> list[bool | BaseException]:
        """As :meth:`StoreBackend.accept_many`. With parallel writers (``writers`` > 1) the writes queued
        together could commit in either order, so they are written one after the other instead: the
        outbox keeps the order it is given."""
        if self.writers == 1:
            return await super().accept_many(entries)
        out: list[bool | BaseException] = []
        for message_id, items, maps in entries:
            try:
                out.append(await self.accept_mapped(message_id, items, maps))
            except Exception as e:  # noqa: BLE001 - that message's outcome, as the batched path gives it
                out.append(e)
        return out

    async def seen(self, message_id: str) -> bool:
        return await self._fetchval("SELECT 1 FROM inbox WHERE id = $1", message_id) is not None

    # -- outbox ----------------------------------------------------------------------------------------------------
    async def ready_lanes(self, now: float) -> list[str]:
        rows = await self._fetch(
            f"SELECT o.lane FROM ({common.HEADS}) h JOIN outbox o ON o.id = h.hid WHERE o.not_before <= $1"
            " ORDER BY o.id",
            now,
        )
        return [r[0] for r in rows]

    async def next_due(self, now: float) -> float | None:
        """Earliest ``not_before`` > ``now`` among lane heads (when the next backoff expires), or None."""
        return await self._fetchval(
            f"SELECT MIN(o.not_before) FROM ({common.HEADS}) h JOIN outbox o ON o.id = h.hid"
            " WHERE o.not_before > $1",
            now,
        )

    async def lanes_after(self, after_id: int) -> tuple[list[str], int]:
        """Lanes with items whose id > ``after_id`` (enqueued since), and the highest such id."""
        rows = await self._fetch("SELECT lane, MAX(id) FROM outbox WHERE id > $1 GROUP BY lane", after_id)
        return [r[0] for r in rows], max((r[1] for r in rows), default=after_id)

    async def max_id(self) -> int:
        """The highest outbox id handed out so far (0 for a new store)."""
        r = await self._fetchrow("SELECT last_value, is_called FROM outbox_id_seq")
        return int(r[0]) if r and r[1] else 0

    async def head(self, lane: str) -> OutboxItem | None:
        r = await self._fetchrow(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE lane = $1 ORDER BY id LIMIT 1", lane)
        return common.item_from_row(r) if r else None

    async def peek(self, lane: str, limit: int = 32) -> list[OutboxItem]:
        """Up to ``limit`` oldest items of ``lane`` in order (the engine prefetches with it)."""
        rows = await self._fetch(
            f"SELECT {_OUTBOX_COLS} FROM outbox WHERE lane = $1 ORDER BY id LIMIT $2", lane, limit)
        return [common.item_from_row(r) for r in rows]

    async def sent_parts(self, item_id: int) -> list[list[str]]:
        """Native ids of the parts recorded with ``progress(..., sent=...)`` (empty if none)."""
        v = await self._fetchval("SELECT sent FROM outbox WHERE id = $1", item_id)
        return _loads(v) if v is not None else []

    async def complete(self, item_id: int) -> None:
        await self._write(_op_complete_many, [item_id])

    async def complete_many(self, item_ids: Iterable[int]) -> None:
        await self._write(_op_complete_many, [int(i) for i in item_ids])

    async def outbox_depths(self) -> dict[str, tuple[int, float]]:
        rows = await self._fetch("SELECT lane, COUNT(*), MIN(enqueued_at) FROM outbox GROUP BY lane")
        return {r[0]: (r[1], r[2]) for r in rows}

    async def outbox_count(self) -> int:
        return await self._fetchval("SELECT COUNT(*) FROM outbox")

    # -- dead letters ----------------------------------------------------------------------------------------------
    async def dlq_list(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._fetch(
            f"SELECT {_OUTBOX_COLS}, reason, failed_at FROM dead_letters ORDER BY failed_at DESC, id DESC LIMIT $1",
            limit,
        )
        return [common.dead_letter_from_row(r) for r in rows]

    async def dlq_count(self) -> int:
        return await self._fetchval("SELECT COUNT(*) FROM dead_letters")

    # -- message map -----------------------------------------------------------------------------------------------
    async def map_get(self, origin_id: str, lane: str) -> list[str]:
        rows = await self._fetch(
            "SELECT native_id FROM message_map WHERE origin_id = $1 AND lane = $2 ORDER BY part", origin_id, lane)
        return [r[0] for r in rows]

    async def map_reverse(self, lane_prefix: str, native_id: str) -> str | None:
        return await self._fetchval(
            "SELECT origin_id FROM message_map WHERE native_id = $1 AND starts_with(lane, $2)"
            " ORDER BY created_at DESC LIMIT 1",
            str(native_id), lane_prefix,
        )

    # -- kv --------------------------------------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> Any | None:
        v = await self._fetchval("SELECT value FROM kv WHERE namespace = $1 AND key = $2", namespace, key)
        return _loads(v) if v is not None else None

    async def kv_items(self, namespace: str) -> dict[str, Any]:
        rows = await self._fetch("SELECT key, value FROM kv WHERE namespace = $1 ORDER BY key", namespace)
        return {r[0]: _loads(r[1]) for r in rows}

    # -- audit -----------------------------------------------------------------------------------------------------
    async def audit_list(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._fetch("SELECT id, ts, actor, action, detail FROM audit ORDER BY id DESC LIMIT $1", limit)
        return [common.audit_from_row(r) for r in rows]

    # -- message trace (core.trace) --------------------------------------------------------------------------------
    async def trace_write(self, events: Sequence[TraceEvent]) -> None:
        if not events:
            return
        rows, keys = merge_events(events)
        rows = sorted(([_pg_text(v) for v in r] for r in rows), key=lambda r: r[0])
        keys = sorted({(_pg_text(k), _pg_text(m)) for k, m in keys})
        await self._write(_op_trace_write, rows, keys)

    async def trace_get(self, message_id: str) -> dict[str, Any] | None:
        r = await self._fetchrow(
            f"{common.TRACE_SUMMARY_SELECT.replace(' FROM', ', events FROM', 1)} WHERE message_id = $1", message_id)
        return None if r is None else trace_document(r)

    async def trace_resolve(self, key: str, limit: int = 20) -> list[str]:
        key = str(key).strip()
        keys, outbox_id = resolve_keys(key)
        found: dict[str, float] = {}
        async with self._acquire() as c:
            r = await c.fetchrow("SELECT message_id, last_at FROM trace_messages WHERE message_id = $1", key)
            if r is not None:
                found[r[0]] = r[1]
            for mid, ts in await c.fetch(
                "SELECT k.message_id, COALESCE(m.last_at, 0) FROM trace_keys k LEFT JOIN trace_messages m"
                " ON m.message_id = k.message_id WHERE k.key = ANY($1::text[]) LIMIT $2", keys, limit,
            ):
                found.setdefault(mid, ts)
            if outbox_id is not None:
                for table in ("outbox", "dead_letters"):  # queued or dead, maybe no attempt recorded yet
                    row = await c.fetchrow(f"SELECT message, enqueued_at FROM {table} WHERE id = $1", outbox_id)
                    mid = _message_id(row[0]) if row is not None else None
                    if mid:
                        found.setdefault(mid, row[1])
        return [m for m, _ in sorted(found.items(), key=lambda kv: -kv[1])][:limit]

    async def _trace_rows(self, *, route: str | None, chat: str | None, sender: str | None, since: float | None,
                          until: float | None, ids: list[str] | None, limit: int) -> list[dict[str, Any]]:
        """The summaries ``trace_search`` filters (see StoreBackend)."""
        where: list[str] = []
        args: list[Any] = []

        def arg(v: Any) -> str:
            args.append(v)
            return f"${len(args)}"

        if route:
            where.append(f"strpos(' ' || COALESCE(routes, '') || ' ', {arg(f' {route} ')}) > 0")
        if chat:
            p = arg(chat)
            where.append(f"(strpos(COALESCE(origin, ''), {p}) > 0 OR strpos(COALESCE(lanes, ''), {p}) > 0)")
        if sender:
            where.append(f"sender = {arg(sender)}")
        if since is not None:
            where.append(f"last_at >= {arg(float(since))}")
        if until is not None:
            where.append(f"last_at <= {arg(float(until))}")
        if ids is not None:
            where.append(f"message_id = ANY({arg(ids)}::text[])")
        sql = (common.TRACE_SUMMARY_SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
               + f" ORDER BY last_at DESC LIMIT {arg(limit)}")
        return [trace_summary(r) for r in await self._fetch(sql, *args)]

    # -- maintenance -----------------------------------------------------------------------------------------------
    async def purge(self, now: float | None = None, *, chunk: int = 5000) -> dict[str, int]:
        """Delete inbox ids, message-map rows, audit rows and message traces past their TTL, in chunks
        of ``chunk`` rows (each its own write; ``trace``: whole messages). Several replicas purging at
        once is harmless."""
        now = self.clock() if now is None else now
        cutoffs = {"inbox": now - self.inbox_ttl, "message_map": now - self.map_ttl, "audit": now - self.audit_ttl,
                   "dead_letters": now - self.dead_letter_ttl, "trace": now - self.trace_ttl}
        counts = {}
        for table, before in cutoffs.items():
            total = 0
            while True:
                n = await self._write(_op_prune, table, before, chunk)
                total += n
                if n < chunk:
                    break
            counts[table] = total
        if any(counts.values()):
            log.info("store purge: %s", counts)
        return counts

    async def compact(self, *, vacuum: bool = True) -> dict[str, Any]:
        """Nothing to do: PostgreSQL's autovacuum reuses the space of deleted rows and its
        checkpoints recycle the WAL. Returns an empty dict."""
        return {}

    # -- coordination between replicas (see .leases) ------------------------------------------------------------
    async def lease_acquire(self, names: Sequence[str], owner: str, ttl: float) -> list[str]:
        """Take or renew leases ``names`` for ``owner`` for ``ttl`` seconds (the database's clock).
        Returns the names ``owner`` holds now; the others belong to a live other owner."""
        if not names:
            return []
        return await self._write_ordered(_op_lease_acquire, list(names), owner, float(ttl))

    async def lease_release(self, names: Sequence[str], owner: str) -> int:
        return await self._write_ordered(_op_lease_release, list(names), owner)

    async def lease_list(self) -> list[dict[str, Any]]:
        """Every live lease: name, owner, seconds left."""
        rows = await self._fetch(
            f"SELECT name, owner, expires_at - {_NOW} FROM leases WHERE expires_at > {_NOW} ORDER BY name")
        return [{"name": r[0], "owner": r[1], "expires_in_s": round(r[2], 1)} for r in rows]

    async def bucket_take(self, name: str, burst: float, per_second: float) -> float:
        """Take one token from the shared bucket ``name``: 0 when taken, else seconds until one accrues."""
        return await self._write(_op_bucket_take, name, float(burst), float(per_second))

    async def bucket_drain(self, name: str) -> None:
        await self._write(_op_bucket_drain, name)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await self._write(_op_noop)

    def _queued(self) -> int:
        return len(self._pending) + len(self._ordered)


def _message_id(message: str) -> str | None:
    """The ``id`` of an outbox row's message JSON (None when it has none or does not parse)."""
    try:
        mid = _loads(message).get("id")
    except (ValueError, AttributeError):
        return None
    return mid if isinstance(mid, str) and mid else None


# SQLSTATEs that say the database cannot take writes now, whatever is written: the batch fails as a
# whole and the store is in an outage until a batch commits again
_UNAVAILABLE_STATES = frozenset({
    "57P01", "57P02", "57P03",  # admin / crash shutdown, cannot connect now (starting up)
    "25006",  # read-only transaction (a standby, or default_transaction_read_only)
    "3D000", "28000", "28P01",  # at (re)connect: the database is gone, authentication refused
})
_UNAVAILABLE_CLASSES = ("08", "53", "58")  # connection exception, insufficient resources (disk full,
# out of memory, too many connections), system error (I/O)


def is_unavailable(e: BaseException) -> bool:
    """Does ``e`` say the database cannot be reached or written now (rather than that one operation
    is wrong)?"""
    if _is_connection_error(e):
        return True
    import asyncpg

    if isinstance(e, asyncpg.InternalClientError):  # a connection the server dropped mid-operation
        return True  # (e.g. "cannot switch to state 15" while the pool resets it during a shutdown)
    state = getattr(e, "sqlstate", None) or ""
    return isinstance(state, str) and (state in _UNAVAILABLE_STATES or state[:2] in _UNAVAILABLE_CLASSES)


def _is_connection_error(e: BaseException) -> bool:
    import asyncpg

    if isinstance(e, asyncpg.InterfaceError):
        return not isinstance(e, ValueError)  # asyncpg's DataError (a bad argument) is one too
    return isinstance(e, (asyncpg.PostgresConnectionError, OSError)) or (
        isinstance(e, asyncpg.PostgresError) and getattr(e, "sqlstate", "") in {"57P01", "57P02", "57P03"}
    )
