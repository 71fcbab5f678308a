"""SQLite backend of the :class:`~claudemesh_gateway.store.base.Store` protocol.

Layout
------
* One **writer** connection, driven by one asyncio task. Every write is queued as
  a small synchronous operation plus a future. The writer drains the whole queue,
  runs the operations inside ONE transaction, commits, and only then resolves the
  futures. If an operation raises, the batch is rolled back and run again with a
  SAVEPOINT around each operation, so the failing one rolls back alone and fails
  only its own future (the common path pays nothing for that isolation). ``await store.accept(...)`` therefore returns
  after *its* commit, while thousands of concurrent callers share each commit
  (group commit).
* One **reader** connection (``query_only``) for everything that only reads. In WAL
  mode readers never block the writer and always see the last committed state.

Durability
----------
WAL journal. ``synchronous`` defaults to ``FULL``: every commit fsyncs the WAL, so a
message acknowledged to its source survives a power cut, not only a process crash.
Group commit makes that affordable (one fsync per batch, not per message). With
``synchronous="NORMAL"`` a commit survives a crash of the process but the last
batches may be lost on power loss or kernel panic (the database never corrupts).

Outage
------
When the database cannot be written (disk full, I/O error, read-only file, locked beyond the busy
timeout) a batch fails as a whole: nothing of it is committed and every caller gets
:class:`~claudemesh_gateway.errors.StoreUnavailable` (sources answer "retry later"). Until a batch
commits again :attr:`SqliteStore.write_problem` names the cause (``/-/ready`` reports it and the
delivery engine sends nothing), the outage is logged once when it starts, then at most once a
minute, and once when it ends; a small probe write every ``probe_interval`` seconds notices the
recovery even when nothing else writes.

Retention
---------
A background task prunes what dedup, replies, edits and operators no longer need (the policy:
:mod:`.retention`), in deletes of ``[retention] batch`` rows, each its own writer operation, then
gives the freed pages back (``auto_vacuum = INCREMENTAL``, ``incremental_vacuum``) and truncates the
WAL (``wal_checkpoint(TRUNCATE)``). The code is the "pruning" sections below.

Both connections are driven through aiosqlite's worker threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from ..errors import StartupError, StoreUnavailable
from ..files import make_private_dir
from .backend import (
    HEADS,
    MIN_INBOX_TTL,
    OUTBOX_COLS,
    ROW_COLS,
    TRACE_SUMMARY_SELECT,
    Op,
    StoreBackend,
    WriteOps,
    audit_from_row,
    dead_letter_from_row,
    item_from_row,
    refuse_newer,
)
from .base import DeadLetter, OutboxItem, TraceEvent
from .jsonio import dumps, loads
from .retention import DAY, RetentionConfig, prune_pass
from .tracerows import TRACE_EVENTS_MAX, merge_events, resolve_keys, trace_document, trace_summary

__all__ = ["SCHEMA_VERSION", "TRACE_EVENTS_MAX", "SqliteStore"]

log = logging.getLogger(__name__)

_loads = loads
_dumps = dumps

# -- schema ----------------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS inbox (
    id        TEXT PRIMARY KEY,
    seen_at   REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_seen_at ON inbox(seen_at);

CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lane        TEXT NOT NULL,
    route       TEXT NOT NULL,
    destination TEXT NOT NULL,
    message     TEXT NOT NULL,
    options     TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL NOT NULL DEFAULT 0,
    progress    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    enqueued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox(lane, id);

CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    lane        TEXT NOT NULL,
    route       TEXT NOT NULL,
    destination TEXT NOT NULL,
    message     TEXT NOT NULL,
    options     TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    not_before  REAL NOT NULL,
    progress    INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    reason      TEXT NOT NULL,
    failed_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_failed_at ON dead_letters(failed_at);

CREATE TABLE IF NOT EXISTS message_map (
    origin_id  TEXT NOT NULL,
    lane       TEXT NOT NULL,
    part       INTEGER NOT NULL,
    native_id  TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (origin_id, lane, part)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS message_map_native ON message_map(native_id, lane);
CREATE INDEX IF NOT EXISTS message_map_created ON message_map(created_at);

CREATE TABLE IF NOT EXISTS kv (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts     REAL NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
"""


def _migrate_v1(conn: sqlite3.Connection) -> None:
    for stmt in _SCHEMA_V1.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    # native ids of the parts already sent (JSON list of lists), so a message split in parts and
    # interrupted by a crash still gets its complete message map when it resumes
    conn.execute("ALTER TABLE outbox ADD COLUMN sent TEXT NOT NULL DEFAULT '[]'")
    conn.execute("ALTER TABLE dead_letters ADD COLUMN sent TEXT NOT NULL DEFAULT '[]'")


def _migrate_v3(conn: sqlite3.Connection) -> None:
    # message trace (core.trace): one row per message (summary columns + its events, appended as JSON
    # lines), and one index of the keys it can be found by (native ids, "#<outbox id>"; the row's
    # ``keys`` column lists them again, so a purge deletes exactly those index rows)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS trace_messages (message_id TEXT PRIMARY KEY, first_at REAL NOT NULL,"
        " last_at REAL NOT NULL, origin TEXT, sender TEXT, routes TEXT, lanes TEXT, dropped TEXT,"
        " dests INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,"
        " failed INTEGER NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0, events TEXT NOT NULL DEFAULT '',"
        " keys TEXT NOT NULL DEFAULT '')"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS trace_messages_last ON trace_messages(last_at)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS trace_keys (key TEXT NOT NULL, message_id TEXT NOT NULL,"
        " PRIMARY KEY (key, message_id)) WITHOUT ROWID"
    )


def _migrate_v4(conn: sqlite3.Connection) -> None:
    # retention: a message-map row lives for the reply window after its last use (delivery, or a
    # reply or edit resolved through it: map_touch), not after its creation
    conn.execute("ALTER TABLE message_map ADD COLUMN last_used REAL NOT NULL DEFAULT 0")
    conn.execute("UPDATE message_map SET last_used = created_at")
    conn.execute("DROP INDEX IF EXISTS message_map_created")
    conn.execute("CREATE INDEX IF NOT EXISTS message_map_last_used ON message_map(last_used)")


# (target version, function). Append new steps; never edit a released one.
MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (1, _migrate_v1),
    (2, _migrate_v2),
    (3, _migrate_v3),
    (4, _migrate_v4),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`, one transaction per step. Returns the old version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    refuse_newer(current, SCHEMA_VERSION)
    for version, step in MIGRATIONS:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store schema migrated to version %d", version)
    ensure_incremental_vacuum(conn)
    return current


def ensure_incremental_vacuum(conn: sqlite3.Connection) -> None:
    """``auto_vacuum = INCREMENTAL``, so pruned pages can be given back (``incremental_vacuum``).

    SQLite changes the mode of a file that has tables only with a ``VACUUM`` (outside any
    transaction; it rewrites the file once, through the WAL). New stores pay that on an empty file;
    a store made before schema version 4 pays it once on the first start of this version.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    started = time.monotonic()
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    if pages > 64:
        log.info("store converted to auto_vacuum=INCREMENTAL (%d pages) in %.1fs", pages,
                 time.monotonic() - started)


# -- rows ------------------------------------------------------------------------------------------

_INSERT_OUTBOX = f"INSERT INTO outbox ({ROW_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"


def _prefix_upper(prefix: str) -> str:
    """Smallest string greater than every string starting with ``prefix`` (for range scans)."""
    return prefix + "\U0010ffff"


# -- write operations (run in the writer thread, inside the batch transaction) ----------------------

def _op_accept(c: sqlite3.Connection, message_id: str, now: float, rows: list[tuple[Any, ...]]) -> bool:
    if c.execute("INSERT OR IGNORE INTO inbox (id, seen_at) VALUES (?, ?)", (message_id, now)).rowcount == 0:
        return False
    if len(rows) == 1:
        c.execute(_INSERT_OUTBOX, rows[0])
    elif rows:
        c.executemany(_INSERT_OUTBOX, rows)  # one call for a message's destinations
    return True


def _op_accept_mapped(c: sqlite3.Connection, message_id: str, now: float, rows: list[tuple[Any, ...]],
                      maps: list[tuple[str, list[str]]]) -> bool:
    if not _op_accept(c, message_id, now, rows):
        return False
    for lane, native_ids in maps:
        _op_map_put(c, message_id, lane, native_ids, now)
    return True


def _op_enqueue(c: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[int]:
    ids = []
    for row in rows:
        ids.append(c.execute(_INSERT_OUTBOX, row).lastrowid)
    return ids


def _op_progress(c: sqlite3.Connection, item_id: int, parts_done: int, sent: str | None) -> None:
    if sent is None:
        c.execute("UPDATE outbox SET progress = ? WHERE id = ?", (parts_done, item_id))
    else:
        c.execute("UPDATE outbox SET progress = ?, sent = ? WHERE id = ?", (parts_done, sent, item_id))


def _op_complete(c: sqlite3.Connection, item_id: int) -> None:
    c.execute("DELETE FROM outbox WHERE id = ?", (item_id,))


def _op_complete_many(c: sqlite3.Connection, ids: list[tuple[int]]) -> None:
    c.executemany("DELETE FROM outbox WHERE id = ?", ids)


def _op_reschedule(c: sqlite3.Connection, item_id: int, not_before: float, attempts: int, error: str) -> None:
    c.execute(
        "UPDATE outbox SET not_before = ?, attempts = ?, last_error = ? WHERE id = ?",
        (not_before, attempts, error, item_id),
    )


def _op_dead_letter(c: sqlite3.Connection, item_id: int, reason: str, now: float) -> bool:
    cur = c.execute(
        f"INSERT OR REPLACE INTO dead_letters ({OUTBOX_COLS}, sent, reason, failed_at)"
        f" SELECT {OUTBOX_COLS}, sent, ?, ? FROM outbox WHERE id = ?",
        (reason, now, item_id),
    )
    if cur.rowcount == 0:
        return False
    c.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
    return True


def _id_filter(ids: Sequence[int] | None) -> tuple[str, tuple[Any, ...]]:
    if ids is None:
        return "", ()
    ids = [int(i) for i in ids]
    return f" WHERE id IN ({','.join('?' * len(ids))})", tuple(ids)


def _op_dlq_retry(c: sqlite3.Connection, ids: Sequence[int] | None, now: float) -> int:
    if ids is not None and not ids:
        return 0
    where, args = _id_filter(ids)
    # Re-queued at the END of their lane under a new id (the engine notices new ids cheaply, and a
    # message retried hours later should not jump ahead of what is queued meanwhile). attempts,
    # not_before and the last error start afresh and enqueued_at is now (so max_age counts from the
    # retry); progress (and the ids of those parts) is kept so parts already delivered are not sent twice.
    cur = c.execute(
        "INSERT INTO outbox (lane, route, destination, message, options, attempts, not_before,"
        " progress, sent, last_error, enqueued_at) SELECT lane, route, destination, message, options, 0, 0,"
        f" progress, sent, '', ? FROM dead_letters{where} ORDER BY id",
        (now, *args),
    )
    moved = cur.rowcount
    c.execute(f"DELETE FROM dead_letters{where}", args)
    return moved


def _op_dlq_drop(c: sqlite3.Connection, ids: Sequence[int] | None) -> int:
    if ids is not None and not ids:
        return 0
    where, args = _id_filter(ids)
    return c.execute(f"DELETE FROM dead_letters{where}", args).rowcount


def _op_map_put(c: sqlite3.Connection, origin_id: str, lane: str, native_ids: Sequence[str], now: float) -> None:
    c.execute("DELETE FROM message_map WHERE origin_id = ? AND lane = ?", (origin_id, lane))
    if len(native_ids) == 1:
        c.execute(_INSERT_MAP, (origin_id, lane, 0, str(native_ids[0]), now, now))
    else:
        c.executemany(_INSERT_MAP, [(origin_id, lane, i, str(n), now, now) for i, n in enumerate(native_ids)])


_INSERT_MAP = "INSERT INTO message_map (origin_id, lane, part, native_id, created_at, last_used) VALUES (?,?,?,?,?,?)"


def _op_kv_set(c: sqlite3.Connection, ns: str, key: str, value: str, now: float) -> None:
    c.execute(
        "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?,?,?,?)"
        " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (ns, key, value, now),
    )


def _op_kv_delete(c: sqlite3.Connection, ns: str, key: str) -> None:
    c.execute("DELETE FROM kv WHERE namespace = ? AND key = ?", (ns, key))


def _op_audit(c: sqlite3.Connection, now: float, actor: str, action: str, detail: str) -> None:
    c.execute("INSERT INTO audit (ts, actor, action, detail) VALUES (?,?,?,?)", (now, actor, action, detail))


# -- message trace (core.trace): write + read operations ---------------------------------------------

_TRACE_UPSERT = (
    "INSERT INTO trace_messages (message_id, first_at, last_at, origin, sender, routes, lanes, dropped,"
    " dests, delivered, failed, dead, events, keys) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (message_id)"
    " DO UPDATE SET first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at),"
    " origin = COALESCE(origin, excluded.origin), sender = COALESCE(sender, excluded.sender),"
    " routes = COALESCE(routes, excluded.routes), lanes = COALESCE(lanes, excluded.lanes),"
    " dropped = COALESCE(excluded.dropped, dropped), dests = dests + excluded.dests,"
    " delivered = delivered + excluded.delivered, failed = failed + excluded.failed,"
    " dead = MAX(0, dead + excluded.dead), keys = keys || excluded.keys,"
    f" events = CASE WHEN length(events) >= {TRACE_EVENTS_MAX} THEN events ELSE events || excluded.events END"
)


def _op_trace_write(c: sqlite3.Connection, rows: list[tuple[Any, ...]], keys: list[tuple[str, str]]) -> None:
    """``rows``: one upsert per message (events merged by :meth:`SqliteStore.trace_write`)."""
    c.executemany(_TRACE_UPSERT, rows)
    if keys:
        c.executemany("INSERT OR IGNORE INTO trace_keys (key, message_id) VALUES (?,?)", keys)


def _rd_trace_get(c: sqlite3.Connection, message_id: str) -> dict[str, Any] | None:
    r = c.execute(f"{TRACE_SUMMARY_SELECT.replace(' FROM', ', events FROM', 1)} WHERE message_id = ?",
                  (message_id,)).fetchone()
    return None if r is None else trace_document(r)


def _rd_trace_resolve(c: sqlite3.Connection, key: str, limit: int) -> list[str]:
    keys, outbox_id = resolve_keys(key)  # an outbox / dead-letter id too when digits
    found: dict[str, float] = {}
    r = c.execute("SELECT message_id, last_at FROM trace_messages WHERE message_id = ?", (key,)).fetchone()
    if r is not None:
        found[r[0]] = r[1]
    for k in keys:
        for mid, ts in c.execute(
            "SELECT k.message_id, COALESCE(m.last_at, 0) FROM trace_keys k LEFT JOIN trace_messages m"
            " ON m.message_id = k.message_id WHERE k.key = ? LIMIT ?", (k, limit),
        ).fetchall():
            found.setdefault(mid, ts)
    if outbox_id is not None:
        for table in ("outbox", "dead_letters"):  # queued or dead, maybe no attempt recorded yet
            row = c.execute(f"SELECT json_extract(message, '$.id'), enqueued_at FROM {table} WHERE id = ?",
                            (outbox_id,)).fetchone()
            if row is not None and row[0]:
                found.setdefault(row[0], row[1])
    return [m for m, _ in sorted(found.items(), key=lambda kv: -kv[1])][:limit]


def _rd_trace_search(c: sqlite3.Connection, where: list[str], args: list[Any], ids: list[str] | None,
                     limit: int) -> list[dict[str, Any]]:
    if ids is not None:
        if not ids:
            return []
        where = [*where, f"message_id IN ({','.join('?' * len(ids))})"]
        args = [*args, *ids]
    sql = TRACE_SUMMARY_SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY last_at DESC LIMIT ?"
    return [trace_summary(r) for r in c.execute(sql, (*args, limit)).fetchall()]


def _op_sql(c: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
    return c.execute(sql, args).rowcount


def _op_probe(c: sqlite3.Connection) -> None:
    """A write that changes nothing but still needs a page written (the outage probe)."""
    version = int(c.execute("PRAGMA user_version").fetchone()[0])
    c.execute(f"PRAGMA user_version = {version}")


# SQLite result codes (primary) that mean the database cannot be written right now, whatever is
# written: the batch fails as a whole and the store is in an outage until a batch commits again
_UNWRITABLE_CODES = frozenset({
    5,   # SQLITE_BUSY (beyond busy_timeout)
    6,   # SQLITE_LOCKED
    7,   # SQLITE_NOMEM
    8,   # SQLITE_READONLY
    10,  # SQLITE_IOERR
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
})
_UNWRITABLE_TEXTS = ("database or disk is full", "disk i/o error", "readonly database", "unable to open database",
                     "database is locked", "out of memory")


def _unwritable(e: BaseException) -> bool:
    """Does ``e`` say the database cannot be written now (rather than that one operation is wrong)?"""
    if not isinstance(e, sqlite3.Error):
        return False
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _UNWRITABLE_CODES
    text = str(e).lower()
    return any(t in text for t in _UNWRITABLE_TEXTS)


def _refused(e: BaseException) -> StoreUnavailable:
    """What a caller of a write gets when its batch could not be committed because of ``e``."""
    err = StoreUnavailable(f"the store cannot write: {e}")
    err.__cause__ = e
    return err


def _run_batch(c: sqlite3.Connection, ops: list[Op]) -> list[tuple[bool, Any]]:
    """Run ``ops`` in one transaction. Runs in the writer thread.

    Fast path: every operation straight in one transaction. Should one raise, the transaction is
    rolled back and the batch is run again with a SAVEPOINT around each operation, so the failing
    one rolls back alone and fails only its own future while the others commit. (Operations are
    pure functions of their arguments, so running them again is safe.)
    """
    results: list[tuple[bool, Any]] = []
    c.execute("BEGIN IMMEDIATE")
    try:
        for fn, args, _fut in ops:
            results.append((True, fn(c, *args)))
    except Exception as e:  # isolated below
        if _unwritable(e):  # every operation would fail the same way: the batch fails as a whole
            _rollback(c)
            raise
        c.execute("ROLLBACK")
        return _run_batch_isolated(c, ops)
    except BaseException:
        _rollback(c)
        raise
    try:
        c.execute("COMMIT")
    except BaseException:
        _rollback(c)
        raise
    return results


def _run_batch_isolated(c: sqlite3.Connection, ops: list[Op]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    c.execute("BEGIN IMMEDIATE")
    try:
        for fn, args, _fut in ops:
            c.execute("SAVEPOINT op")
            try:
                r = fn(c, *args)
            except Exception as e:  # handed to the caller's future
                if _unwritable(e):
                    raise
                c.execute("ROLLBACK TO op")
                c.execute("RELEASE op")
                results.append((False, e))
            else:
                c.execute("RELEASE op")
                results.append((True, r))
        c.execute("COMMIT")
    except BaseException:
        _rollback(c)
        raise
    return results


def _rollback(c: sqlite3.Connection) -> None:
    if c.in_transaction:
        try:
            c.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("store: rollback after a failed batch failed")


# -- read operations (run in the reader thread) ------------------------------------------------------

def _rd_head(c: sqlite3.Connection, lane: str) -> OutboxItem | None:
    r = c.execute(f"SELECT {OUTBOX_COLS} FROM outbox WHERE lane = ? ORDER BY id LIMIT 1", (lane,)).fetchone()
    return item_from_row(r) if r else None


def _rd_peek(c: sqlite3.Connection, lane: str, limit: int) -> list[OutboxItem]:
    rows = c.execute(
        f"SELECT {OUTBOX_COLS} FROM outbox WHERE lane = ? ORDER BY id LIMIT ?", (lane, limit)
    ).fetchall()
    return [item_from_row(r) for r in rows]


_SEEN = "SELECT 1 FROM inbox WHERE id = ?"


def _rd_ready_lanes(c: sqlite3.Connection, now: float) -> list[str]:
    rows = c.execute(
        f"SELECT o.lane FROM ({HEADS}) h JOIN outbox o ON o.id = h.hid WHERE o.not_before <= ? ORDER BY o.id",
        (now,),
    ).fetchall()
    return [r[0] for r in rows]


def _rd_next_due(c: sqlite3.Connection, now: float) -> float | None:
    r = c.execute(
        f"SELECT MIN(o.not_before) FROM ({HEADS}) h JOIN outbox o ON o.id = h.hid WHERE o.not_before > ?",
        (now,),
    ).fetchone()
    return r[0] if r else None


def _rd_lanes_after(c: sqlite3.Connection, after_id: int) -> tuple[list[str], int]:
    rows = c.execute("SELECT lane, MAX(id) FROM outbox WHERE id > ? GROUP BY lane", (after_id,)).fetchall()
    return [r[0] for r in rows], max((r[1] for r in rows), default=after_id)


def _rd_all(c: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    return c.execute(sql, args).fetchall()


def _rd_one(c: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Any:
    return c.execute(sql, args).fetchone()


def _rd_backup(c: sqlite3.Connection, dest: str) -> None:
    target = sqlite3.connect(dest)
    try:
        c.backup(target)  # one step: a consistent snapshot of the last commit
    finally:
        target.close()


def _tighten(path: Path) -> None:
    """Mode 0600 for the store file and its -wal/-shm companions (a store made by an older version,
    or copied in, may be readable by others); a file we may not chmod is left with a warning."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = p.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(p, 0o600)
                log.warning("store file %s was mode %o; now 0600 (it holds the session secret key)", p, mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("store file %s is readable by others and could not be made 0600: %s", p, exc.strerror)


# -- pruning (retention): write operations ------------------------------------------------------------
# Each deletes at most ``limit`` rows, oldest first, by the table's age column (indexed), so one
# operation is a short part of one group commit. What is kept, and why: retention.py.

_PRUNE_AGE = {  # table -> (age column, key of a row)
    "inbox": ("seen_at", "id"),
    "message_map": ("last_used", "origin_id, lane, part"),
    "audit": ("ts", "id"),
    "dead_letters": ("failed_at", "id"),
}
_PRUNE_SQL = {
    table: f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {col} < ? ORDER BY {col} LIMIT ?)"
    for table, (col, key) in _PRUNE_AGE.items()
}
# the trace: whole messages whose last event is older than the window (summary + events in one row;
# its index rows in trace_keys, listed again in the row's ``keys``, go in the same operation)
_PRUNE_SQL["trace"] = (
    "DELETE FROM trace_messages WHERE message_id IN (SELECT message_id FROM trace_messages WHERE last_at < ?"
    " ORDER BY last_at LIMIT ?) RETURNING message_id, keys"
)
_PRUNE_EXCESS_SQL = {
    "dead_letters": "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters ORDER BY failed_at, id LIMIT ?)",
}
VACUUM_STEP = 256  # pages given back per write (1 MiB at the default page size)


def _op_prune(c: sqlite3.Connection, table: str, before: float, limit: int) -> int:
    if table == "trace":
        return _op_prune_trace(c, before, limit)
    return c.execute(_PRUNE_SQL[table], (before, limit)).rowcount


def _op_prune_trace(c: sqlite3.Connection, before: float, limit: int) -> int:
    gone = c.execute(_PRUNE_SQL["trace"], (before, limit)).fetchall()
    c.executemany("DELETE FROM trace_keys WHERE key = ? AND message_id = ?",
                  [(k, mid) for mid, keys in gone for k in keys.split("\n") if k])
    return len(gone)


def _op_prune_excess(c: sqlite3.Connection, table: str, keep: int, limit: int) -> int:
    over = c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] - keep
    if over <= 0:
        return 0
    return c.execute(_PRUNE_EXCESS_SQL[table], (min(over, limit),)).rowcount


def _op_map_touch(c: sqlite3.Connection, origin_ids: list[str], now: float) -> None:
    c.executemany("UPDATE message_map SET last_used = ? WHERE origin_id = ? AND last_used < ?",
                  [(now, o, now) for o in origin_ids])


def _op_incremental_vacuum(c: sqlite3.Connection, pages: int) -> int:
    """Give back up to ``pages`` free pages (the file shrinks at the next checkpoint)."""
    free = int(c.execute("PRAGMA freelist_count").fetchone()[0])
    n = min(free, pages)
    for _ in range(n):  # Python's sqlite3 steps a PRAGMA once: one page per statement
        c.execute("PRAGMA incremental_vacuum(1)")
    return n


def _wal_checkpoint(c: sqlite3.Connection) -> tuple[int, int, int]:
    """``wal_checkpoint(TRUNCATE)``: (busy, WAL frames, frames checkpointed). Outside a transaction."""
    r = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return int(r[0]), int(r[1]), int(r[2])


def _pragmas(c: sqlite3.Connection, statements: list[str]) -> list[Any]:
    """Run each PRAGMA to completion; the first column of its first row (None without one)."""
    out = []
    for sql in statements:
        rows = c.execute(sql).fetchall()
        out.append(rows[0][0] if rows else None)
    return out


def _rd_file_pages(c: sqlite3.Connection) -> tuple[int, int, int]:
    return (int(c.execute("PRAGMA page_count").fetchone()[0]), int(c.execute("PRAGMA freelist_count").fetchone()[0]),
            int(c.execute("PRAGMA page_size").fetchone()[0]))


# -- the store -----------------------------------------------------------------------------------------

class SqliteStore(StoreBackend):
    """The default durable store. See the module docstring for the design.

    :param path: database file (created with its directory); ``":memory:"`` is refused
        because the writer and the reader need the same database.
    :param synchronous: ``"FULL"`` (default, power-loss safe) or ``"NORMAL"`` (crash safe).
    :param retention: the ``[retention]`` table (windows, caps, pruning pace); see retention.py.
    :param inbox_ttl, map_ttl, audit_ttl, trace_ttl, purge_interval: seconds; override ``retention``'s
        ``inbox_days`` (>= 8 days), ``reply_window_days``, ``audit_days``, ``trace_days`` (a
        message's trace after its last event) and ``interval_s`` (0 disables the background pruning task).
    :param max_batch: most operations committed in one transaction.
    :param probe_interval: seconds between probe writes while the database cannot be written.
    :param clock: wall clock (epoch seconds), injectable for tests.
    """

    write_ops = WriteOps.named(globals())
    logger = log
    outage_began = ("store %(where)s cannot write: %(problem)s; writes are refused (sources are told to retry)"
                    " and the gateway reports not ready until it can")
    outage_lasts = "store %(where)s still cannot write after %(secs).0fs (%(refused)d writes refused): %(problem)s"
    prune_tables = _PRUNE_SQL  # the tables retention prunes (StoreBackend.prune)
    excess_tables = _PRUNE_EXCESS_SQL

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        retention: RetentionConfig | None = None,
        inbox_ttl: float | None = None,
        map_ttl: float | None = None,
        audit_ttl: float | None = None,
        trace_ttl: float | None = None,
        purge_interval: float | None = None,
        max_batch: int = 5000,
        busy_timeout_ms: int = 10_000,
        probe_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if str(path) == ":memory:" or str(path).startswith("file::memory:"):
            raise ValueError("SqliteStore needs a file path (writer and reader share the database)")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        if inbox_ttl is not None and inbox_ttl < MIN_INBOX_TTL:
            raise ValueError("inbox_ttl must be at least 8 days (vendors and meshes redeliver late)")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.path = Path(path)
        self.synchronous = synchronous
        if trace_ttl is not None and trace_ttl <= 0:
            raise ValueError("trace_ttl must be > 0")
        overrides = {key: value for key, value in (
            ("inbox_days", None if inbox_ttl is None else inbox_ttl / DAY),
            ("reply_window_days", None if map_ttl is None else map_ttl / DAY),
            ("audit_days", None if audit_ttl is None else audit_ttl / DAY),
            ("trace_days", None if trace_ttl is None else trace_ttl / DAY),
            ("interval_s", purge_interval),
        ) if value is not None}
        base = retention if retention is not None else RetentionConfig()
        self.retention = RetentionConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self.max_batch = max_batch
        self.busy_timeout_ms = busy_timeout_ms
        if probe_interval <= 0:
            raise ValueError("probe_interval must be > 0")
        self.probe_interval = probe_interval
        self.clock = clock
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._q: sqlite3.Connection | None = None  # point lookups on the loop's own thread (``seen``)
        self._writer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._init_state()
        self.prune_passes = 0
        self.prune_seconds = 0.0
        self.pruned: dict[str, int] = {}  # rows pruned per table since open
        self.vacuumed_pages = 0

    @property
    def trace_ttl(self) -> float:
        """Seconds a message's trace is kept after its last event (``[retention] trace_days``), as
        PostgresStore's ``trace_ttl``."""
        return self.retention.trace_days * DAY

    @property
    def _label(self) -> str:
        return str(self.path)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def open(self) -> None:
        """Open (creating it if needed, mode 0600), migrate, start the writer. Raises StartupError."""
        if self._w is not None:
            return
        try:
            await self._open()
        except (sqlite3.Error, OSError) as e:
            raise StartupError(f"cannot open the store {self.path}: {e}") from e

    async def _open(self) -> None:
        make_private_dir(self.path.parent)
        # cursors, offsets and the session identity live here: owner only, from the first byte
        # (SQLite gives -wal, -shm and -journal files the mode of the database file)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        _tighten(self.path)
        w = await aiosqlite.connect(str(self.path), isolation_level=None, cached_statements=256)
        try:
            # every PRAGMA through _pragmas (each statement finished): an open one would refuse
            # the VACUUM that migrate() may run
            mode = (await self._call(w, _pragmas, [
                f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}", "PRAGMA journal_mode = WAL"]))[1]
            if mode is None or str(mode).lower() != "wal":
                raise StartupError(f"could not put the store {self.path} in WAL mode (got {mode!r})")
            await self._call(w, _pragmas, [
                f"PRAGMA synchronous = {self.synchronous}", "PRAGMA foreign_keys = ON", "PRAGMA temp_store = MEMORY",
                "PRAGMA journal_size_limit = 67108864",  # trim the WAL to 64 MiB after checkpoints
            ])
            await self._call(w, migrate)
            r = await aiosqlite.connect(str(self.path), isolation_level=None, cached_statements=256)
            try:
                await r.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                await r.execute("PRAGMA query_only = ON")
            except BaseException:
                await r.close()
                raise
        except BaseException:
            await w.close()
            raise
        self._w, self._r = w, r
        self._q = self._open_lookup()
        self._closing = False
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._writer_loop(), name="store-writer")
        if self.retention.interval_s > 0:
            self._purger = asyncio.create_task(self._purge_loop(self.retention.interval_s), name="store-prune")
        log.info("store opened: %s (WAL, synchronous=%s)", self.path, self.synchronous)

    async def close(self) -> None:
        self.release_delivery_lock()
        if self._w is None:
            return
        await self._stop_tasks()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)  # drains what is queued
            self._writer = None
        w, r, q = self._w, self._r, self._q
        self._w = self._r = self._q = None
        if q is not None:
            q.close()
        try:
            if r is not None:
                await r.close()
        finally:
            try:
                await w.execute("PRAGMA optimize")
            except sqlite3.Error:
                log.debug("PRAGMA optimize failed on close", exc_info=True)
            await w.close()
        log.info("store closed: %s", self.path)

    def _open_lookup(self) -> sqlite3.Connection | None:
        """A third, read-only connection, used on the event loop's thread for the inbox lookup
        every inbound message starts with (``seen``). A primary-key probe takes microseconds, less
        than a hop to the reader thread and back; and a caller that does not yield between its
        dedup check and its ``accept`` lands in the same group commit as its peers. No busy wait:
        should the probe ever meet a lock, ``seen`` asks the reader thread instead."""
        try:
            q = sqlite3.connect(str(self.path), timeout=0, isolation_level=None, check_same_thread=False,
                                cached_statements=8)
        except sqlite3.Error as e:
            log.debug("store: no loop-thread lookup connection (%s); seen() uses the reader", e)
            return None
        try:
            q.execute("PRAGMA query_only = ON")
        except sqlite3.Error as e:
            q.close()
            log.debug("store: no loop-thread lookup connection (%s); seen() uses the reader", e)
            return None
        return q

    # -- single deliverer ----------------------------------------------------------------------------
    def acquire_delivery_lock(self) -> None:
        """Claim the right to deliver from this file (an flock on ``<path>.delivery.lock``).

        Two gateway processes delivering from one store would send everything twice; the
        DeliveryEngine takes this lock on start. Tools (``dlq``, backups) do not need it.
        Raises StartupError when another process (or engine) holds it.
        """
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks
            return
        lock_path = self.path.with_name(self.path.name + ".delivery.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise StartupError(
                f"another claudemesh-gateway is already delivering from {self.path} (lock {lock_path} is held)"
            ) from e
        self._lock_fd = fd

    def release_delivery_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    # -- plumbing -------------------------------------------------------------------------------------
    @staticmethod
    async def _call(conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
        # aiosqlite runs ``fn`` in the connection's own thread: one hop for a whole batch/query.
        return await conn._execute(fn, conn._conn, *args)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._w is None or self._closing:
            raise RuntimeError("the store is not open")
        if self._writer is not None and self._writer.done():
            raise RuntimeError("the store's writer task has stopped; see the log")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, fut))
        assert self._wake is not None
        self._wake.set()
        return fut

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._submit(fn, *args)

    async def _writer_loop(self) -> None:
        assert self._wake is not None and self._w is not None
        w = self._w
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if len(self._pending) <= self.max_batch:
                batch, self._pending = self._pending, []
            else:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                results = await self._call(w, _run_batch, batch)
            except asyncio.CancelledError:
                self._fail(batch, lambda: RuntimeError("store closed before the commit"))
                raise
            except Exception as e:  # noqa: BLE001 - BEGIN/COMMIT failed (disk full, I/O error, locked): nothing committed
                self.batch_errors += 1
                self._outage(str(e) or type(e).__name__, len(batch))
                self._fail(batch, functools.partial(_refused, e))
                continue
            self._settle(batch, results)

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._r is None:
            raise RuntimeError("the store is not open")
        return await self._call(self._r, fn, *args)

    # -- inbox ledger + outbox ------------------------------------------------------------------------
    async def seen(self, message_id: str) -> bool:
        q = self._q
        if q is not None:
            try:
                return q.execute(_SEEN, (message_id,)).fetchone() is not None
            except sqlite3.Error:  # busy (a WAL recovery, say): the reader thread waits for it
                pass
        return await self._read(_rd_one, _SEEN, (message_id,)) is not None

    # -- outbox -----------------------------------------------------------------------------------------
    async def ready_lanes(self, now: float) -> list[str]:
        return await self._read(_rd_ready_lanes, now)

    async def next_due(self, now: float) -> float | None:
        """Earliest ``not_before`` > ``now`` among lane heads (when the next backoff expires), or None."""
        return await self._read(_rd_next_due, now)

    async def lanes_after(self, after_id: int) -> tuple[list[str], int]:
        """Lanes with items whose id > ``after_id`` (enqueued since), and the highest such id."""
        return await self._read(_rd_lanes_after, after_id)

    async def max_id(self) -> int:
        """The highest outbox id handed out so far (0 for a new store)."""
        r = await self._read(_rd_one, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'", ())
        return int(r[0]) if r else 0

    async def head(self, lane: str) -> OutboxItem | None:
        return await self._read(_rd_head, lane)

    async def peek(self, lane: str, limit: int = 32) -> list[OutboxItem]:
        """Up to ``limit`` oldest items of ``lane`` in order (the engine prefetches with it)."""
        return await self._read(_rd_peek, lane, limit)

    async def sent_parts(self, item_id: int) -> list[list[str]]:
        """Native ids of the parts recorded with ``progress(..., sent=...)`` (empty if none)."""
        r = await self._read(_rd_one, "SELECT sent FROM outbox WHERE id = ?", (item_id,))
        return _loads(r[0]) if r else []

    async def complete(self, item_id: int) -> None:
        await self._write(_op_complete, item_id)

    async def complete_many(self, item_ids: Iterable[int]) -> None:
        await self._write(_op_complete_many, [(i,) for i in item_ids])

    async def outbox_depths(self) -> dict[str, tuple[int, float]]:
        rows = await self._read(
            _rd_all, "SELECT lane, COUNT(*), MIN(enqueued_at) FROM outbox GROUP BY lane", ()
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    async def outbox_count(self) -> int:
        return (await self._read(_rd_one, "SELECT COUNT(*) FROM outbox", ()))[0]

    # -- dead letters ---------------------------------------------------------------------------------------
    async def dlq_list(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._read(
            _rd_all,
            f"SELECT {OUTBOX_COLS}, reason, failed_at FROM dead_letters ORDER BY failed_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [dead_letter_from_row(r) for r in rows]

    async def dlq_count(self) -> int:
        return (await self._read(_rd_one, "SELECT COUNT(*) FROM dead_letters", ()))[0]

    # -- message map ------------------------------------------------------------------------------------------
    async def map_get(self, origin_id: str, lane: str) -> list[str]:
        rows = await self._read(
            _rd_all,
            "SELECT native_id FROM message_map WHERE origin_id = ? AND lane = ? ORDER BY part",
            (origin_id, lane),
        )
        return [r[0] for r in rows]

    async def map_reverse(self, lane_prefix: str, native_id: str) -> str | None:
        r = await self._read(
            _rd_one,
            "SELECT origin_id FROM message_map WHERE native_id = ? AND lane >= ? AND lane < ?"
            " ORDER BY created_at DESC LIMIT 1",
            (str(native_id), lane_prefix, _prefix_upper(lane_prefix)),
        )
        return r[0] if r else None

    # -- kv -----------------------------------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> Any | None:
        r = await self._read(_rd_one, "SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key))
        return _loads(r[0]) if r else None

    async def kv_items(self, namespace: str) -> dict[str, Any]:
        rows = await self._read(_rd_all, "SELECT key, value FROM kv WHERE namespace = ? ORDER BY key", (namespace,))
        return {r[0]: _loads(r[1]) for r in rows}

    # -- audit -----------------------------------------------------------------------------------------------------
    async def audit_list(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._read(
            _rd_all, "SELECT id, ts, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [audit_from_row(r) for r in rows]

    # -- message trace (core.trace) ------------------------------------------------------------------------------------
    async def trace_write(self, events: Sequence[TraceEvent]) -> None:
        if not events:
            return
        rows, keys = merge_events(events)  # one upsert row per message (events of a batch merged)
        await self._write(_op_trace_write, [tuple(r) for r in rows], keys)

    async def trace_get(self, message_id: str) -> dict[str, Any] | None:
        return await self._read(_rd_trace_get, message_id)

    async def trace_resolve(self, key: str, limit: int = 20) -> list[str]:
        return await self._read(_rd_trace_resolve, str(key).strip(), limit)

    async def _trace_rows(self, *, route: str | None, chat: str | None, sender: str | None, since: float | None,
                          until: float | None, ids: list[str] | None, limit: int) -> list[dict[str, Any]]:
        """The summaries ``trace_search`` filters (see StoreBackend)."""
        where: list[str] = []
        args: list[Any] = []
        if route:
            where.append("instr(' ' || COALESCE(routes, '') || ' ', ?) > 0")
            args.append(f" {route} ")
        if chat:
            where.append("(instr(COALESCE(origin, ''), ?) > 0 OR instr(COALESCE(lanes, ''), ?) > 0)")
            args += [chat, chat]
        if sender:
            where.append("sender = ?")
            args.append(sender)
        if since is not None:
            where.append("last_at >= ?")
            args.append(float(since))
        if until is not None:
            where.append("last_at <= ?")
            args.append(float(until))
        return await self._read(_rd_trace_search, where, args, ids, limit)

    # -- maintenance -------------------------------------------------------------------------------------------------
    async def backup(self, dest: str | Path) -> None:
        """Write a consistent online copy of the database to ``dest`` (SQLite backup API).

        Safe while the gateway runs: the copy is the last committed state. It holds what the store
        holds (the session identity's secret key among it), so it is created 0600 (a missing
        directory 0700), before SQLite writes a byte.
        """
        dest = Path(dest)
        make_private_dir(dest.parent)
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(dest, 0o600)  # also when it existed
        await self._read(_rd_backup, str(dest))

    async def checkpoint(self) -> tuple[int, int, int]:
        """Fold the WAL back into the main file (TRUNCATE). Queued behind pending writes.
        Returns SQLite's (busy, WAL frames, frames checkpointed)."""
        await self._write(_op_sql, "SELECT 1", ())  # flush
        assert self._w is not None
        return await self._call(self._w, _wal_checkpoint)

    def stats(self) -> dict[str, int]:
        return {
            **super().stats(), "prune_passes": self.prune_passes, "vacuumed_pages": self.vacuumed_pages,
            **{f"pruned_{table}": n for table, n in self.pruned.items()},
        }

    # -- pruning (retention) -----------------------------------------------------------------------------------------
    # Everything here goes through the one writer in short operations; the policy (what is kept and
    # why) is retention.py's prune_pass. Beyond the Store protocol's core: prune, prune_excess,
    # map_touch, compact (base.py documents them for other backends).
    def _purge_failed(self, e: Exception) -> None:
        """A pruning pass raised ``e`` (the background task tries again next time)."""
        if not isinstance(e, StoreUnavailable):  # an outage is logged by the writer
            log.exception("store pruning failed; will retry")

    async def purge(self, now: float | None = None, *, chunk: int | None = None) -> dict[str, int]:
        """One pruning pass now (the background task runs one every ``interval_s``): rows past
        their window, dead letters beyond the cap, then :meth:`compact`. Counts per table.
        ``chunk`` overrides ``retention.batch`` (rows per write)."""
        cfg = self.retention if chunk is None else self.retention.model_copy(update={"batch": int(chunk)})
        started = time.monotonic()
        counts = await prune_pass(self, cfg, self.clock() if now is None else now)
        self.prune_passes += 1
        self.prune_seconds += time.monotonic() - started
        for table, n in counts.items():
            self.pruned[table] = self.pruned.get(table, 0) + n
        return counts

    async def compact(self, *, vacuum: bool = True) -> dict[str, Any]:
        """Give free pages back (``incremental_vacuum``, :data:`VACUUM_STEP` pages per write) when
        ``vacuum``, then fold the WAL into the file and truncate it (``wal_checkpoint(TRUNCATE)``)."""
        freed = 0
        if vacuum:
            while True:
                n = await self._write(_op_incremental_vacuum, VACUUM_STEP)
                freed += n
                if n < VACUUM_STEP:
                    break
                await asyncio.sleep(0)
        busy, frames, done = await self.checkpoint()
        self.vacuumed_pages += freed
        return {"freed_pages": freed, "wal_busy": busy, "wal_frames": frames, "checkpointed": done}

    async def file_stats(self) -> dict[str, int]:
        """Sizes for operators: pages, free pages, page size, and the bytes of the file and its WAL."""
        pages, free, size = await self._read(_rd_file_pages)
        wal = self.path.with_name(self.path.name + "-wal")
        return {"pages": pages, "free_pages": free, "page_size": size, "file_bytes": self.path.stat().st_size,
                "wal_bytes": wal.stat().st_size if wal.exists() else 0}
