"""Message trace: where did message X go?

Every message's journey is recorded as a few small :class:`~claudemesh_gateway.store.base.TraceEvent`
rows: ``received`` (source, native id, sender, reply/edit of), ``duplicate`` (dedup said seen),
``dropped`` (which rule), ``queued`` (routes matched, the lanes of the outbox items), then per outbox
item each delivery attempt: ``delivered`` (native ids, parts, reply/edit mapped to), ``failed``
(error, retry-after, next attempt) or ``dead_letter``, and ``dlq_retry`` / ``dlq_drop``.

The :class:`TraceRecorder` is the only writer. The pipeline and the delivery engine call it on their
hot path, so ``record`` only appends to a buffer; a background task hands the buffer to
``store.trace_write`` in one write at most every ``flush_interval`` seconds. That write joins the
store's group commit (no commit of its own per message). Trace events are diagnostics: a crash may
lose the last fraction of a second of them, never a message. Message text is never recorded.

This module sits beside the store: it imports only the store's types, so routing and delivery may
use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .store.base import TraceEvent

__all__ = ["TraceRecorder", "TraceSettings", "format_timeline"]

log = logging.getLogger(__name__)

DAY = 86400.0


class TraceSettings(BaseModel):
    """``[trace]``: the message trace (``claudemesh-gateway trace ID``, the dashboard's search)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    retention_days: float = Field(7.0, gt=0, le=3650)  # a message's trace is deleted this long after its last event
    flush_interval: float = Field(0.25, gt=0, le=10)  # seconds between batched trace writes
    # debugging only: keep received messages' text in memory this many minutes so the admin search
    # (``/-/api/messages?q=``) matches words too; 0: never (the trace itself never holds text)
    debug_text_minutes: float = Field(0.0, ge=0, le=1440)


def _mesh_native(message_id: str) -> str | None:
    """``mesh:<mesh>:<id>`` -> ``<id>`` (the mesh's own message id, for lookups by it)."""
    if message_id.startswith("mesh:"):
        rest = message_id[5:]
        _mesh, sep, mid = rest.partition(":")
        if sep and mid:
            return mid
    return None


def _lane_gateway(lane: str) -> str:
    return lane.split("/", 1)[0]


class TraceRecorder:
    """Buffers trace events and writes them in batches through the store's single writer.

    :param store: a store with ``trace_write`` (a store without one keeps no trace).
    :param enabled: ``False``: nothing is written to the store.
    :param otel: a :class:`~claudemesh_gateway.otel.OtelSink`: every step also becomes a span.
        With neither, :attr:`enabled` is False and every method returns at once (zero cost).
    :param flush_interval: seconds between writes.
    :param max_buffer: events kept while the store cannot take them; beyond, new events are dropped
        (counted in ``dropped``).
    """

    def __init__(self, store: Any, *, enabled: bool = True, flush_interval: float = 0.25,
                 max_buffer: int = 100_000, clock: Callable[[], float] = time.time, otel: Any = None) -> None:
        self.store = store
        self.store_enabled = bool(enabled) and callable(getattr(store, "trace_write", None))
        self.otel = otel
        self.enabled = self.store_enabled or otel is not None
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.clock = clock
        self.dropped = 0  # events lost (buffer full or the write failed)
        self.written = 0
        self._buf: list[TraceEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._listeners: list[Callable[[TraceEvent], None]] = []
        self._flush_lock: asyncio.Lock | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.store_enabled or self._task is not None:
            return
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="trace-writer")

    async def stop(self) -> None:
        """Stop the writer task, write what is buffered, end the OpenTelemetry export."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        if self.otel is not None:
            self.otel.shutdown()

    async def _run(self) -> None:
        assert self._wake is not None and self._stopping is not None
        stopping = self._stopping
        while not stopping.is_set():
            await _first(self._wake.wait(), stopping.wait())
            self._wake.clear()
            # events recorded meanwhile join this write
            await _first(asyncio.sleep(self.flush_interval), stopping.wait())
            await self.flush()

    async def flush(self) -> None:
        """Write the buffered events now (tests and shutdown; the writer task does it on its own)."""
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        async with self._flush_lock:
            if not self._buf:
                return
            batch, self._buf = self._buf, []
            try:
                await self.store.trace_write(batch)
            except Exception as e:  # noqa: BLE001 - diagnostics only; the store logs its own outage
                self.dropped += len(batch)
                log.debug("trace: %d event(s) not written: %s", len(batch), e)
                return
            self.written += len(batch)

    # -- live view -------------------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[TraceEvent], None]) -> Callable[[], None]:
        """Call ``fn(event)`` for every event recorded from now on (must not block); returns unsubscribe."""
        self._listeners.append(fn)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(fn)

        return unsubscribe

    # -- recording ----------------------------------------------------------------------------------------
    def record(self, event: TraceEvent, traceparent: str | None = None) -> None:
        """Keep ``event``; ``traceparent``: the W3C trace context of its outbox item (OpenTelemetry)."""
        if not self.enabled:
            return
        if self.otel is not None:
            self.otel.on_event(event, traceparent)
        if self.store_enabled:
            if len(self._buf) >= self.max_buffer:
                self.dropped += 1
            else:
                self._buf.append(event)
                if self._wake is not None:
                    self._wake.set()
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:
                log.exception("trace: a live-view listener raised")

    def _ev(self, message_id: str, step: str, *, item: Any = None, **kw: Any) -> None:
        tp = None
        if item is not None and self.otel is not None and isinstance(item.options, dict):
            tp = item.options.get("traceparent")
        self.record(TraceEvent(message_id=message_id, step=step, ts=self.clock(), **kw), tp)

    # OpenTelemetry context: in the outbox rows, and in the log records of a delivery ----------------------
    def stamp(self, message: Any, items: list[Any]) -> list[Any]:
        """``items`` (about to be enqueued for ``message``) carrying its trace context (OpenTelemetry on)."""
        return items if self.otel is None else self.otel.stamp(message.id, items)

    def attach(self, item: Any) -> Any:
        """While ``item`` is delivered, log records carry its trace id; returns the token for :meth:`detach`."""
        if self.otel is None or not isinstance(item.options, dict):
            return None
        return self.otel.attach(item.options.get("traceparent"))

    def detach(self, token: Any) -> None:
        if token is not None and self.otel is not None:
            self.otel.detach(token)

    # pipeline ----------------------------------------------------------------------------------------------
    def received(self, message: Any) -> None:
        """A new message passed dedup (``message``: claudemesh_gateway.messages.Message)."""
        if not self.enabled:
            return
        origin = message.origin
        detail: dict[str, Any] = {"source": origin.key, "gateway": origin.gateway, "sender": message.sender,
                                  "dedup": "new"}
        natives = []
        if message.native_id:
            detail["native_id"] = str(message.native_id)
            natives.append(str(message.native_id))
        mesh_id = _mesh_native(message.id)
        if mesh_id and mesh_id not in natives:
            natives.append(mesh_id)
        for attr in ("reply_to", "edit_of"):
            v = getattr(message, attr, None)
            if v:
                detail[attr] = str(v)
        if getattr(message, "deleted", False):
            detail["deleted"] = True
        if message.hops:
            detail["hops"] = message.hops
        self._ev(message.id, "received", detail=detail, native_ids=tuple(natives),
                 summary={"origin": origin.key, "sender": message.sender_id or message.sender})

    def duplicate(self, message: Any) -> None:
        if self.enabled:
            self._ev(message.id, "duplicate", detail={"source": message.origin.key, "dedup": "duplicate"})

    def dropped_message(self, message: Any, reason: str, rule: str = "", routes: Sequence[str] = ()) -> None:
        """Dropped for ``reason`` by ``rule``; ``routes``: those it matched (that refused it)."""
        if self.enabled:
            detail: dict[str, Any] = {"reason": reason, **({"rule": rule} if rule else {})}
            summary: dict[str, Any] = {"dropped": reason}
            if routes:
                detail["routes"] = summary["routes"] = sorted(routes)
            self._ev(message.id, "dropped", detail=detail, summary=summary)

    def queued(self, message: Any, targets: Iterable[tuple[Any, str]], matched: Sequence[str] = ()) -> None:
        """Enqueued to ``targets`` ((Address, route) pairs, one outbox item each)."""
        if not self.enabled:
            return
        items = [{"lane": to.key, "route": route} for to, route in targets]
        routes = sorted({i["route"] for i in items} | set(matched))
        detail: dict[str, Any] = {"routes": routes, "items": items}
        self._ev(message.id, "queued", detail=detail, counts={"dests": len(items)},
                 summary={"routes": routes, "lanes": [i["lane"] for i in items]})

    # delivery engine ----------------------------------------------------------------------------------------
    def delivered(self, item: Any, *, attempt: int, native_ids: Sequence[str], parts: int,
                  took: float, reply_to: str | None = None, edit_of: str | None = None) -> None:
        if not self.enabled:
            return
        detail: dict[str, Any] = {"lane": item.lane, "route": item.route, "attempt": attempt,
                                  "native_ids": list(native_ids), "parts": parts, "took_ms": round(took * 1000, 1)}
        if reply_to:
            detail["reply_to"] = reply_to  # the destination's native id the reply was threaded to
        if edit_of:
            detail["edit_of"] = edit_of
        self._ev(_mid(item), "delivered", item=item, outbox_id=item.id, detail=detail,
                 native_ids=tuple(str(n) for n in native_ids), counts={"delivered": 1})

    def failed(self, item: Any, *, attempt: int, error: str, retry_after: float | None,
               next_at: float | None, permanent: bool) -> None:
        if not self.enabled:
            return
        detail: dict[str, Any] = {"lane": item.lane, "route": item.route, "attempt": attempt, "error": error[:500]}
        if retry_after is not None:
            detail["retry_after"] = retry_after
        if permanent:
            self._ev(_mid(item), "dead_letter", item=item, outbox_id=item.id, detail=detail,
                     counts={"dead": 1, "failed": 1})
        else:
            if next_at is not None:
                detail["next_at"] = next_at
            self._ev(_mid(item), "failed", item=item, outbox_id=item.id, detail=detail, counts={"failed": 1})

    def dlq(self, action: str, dead_letters: Iterable[Any], actor: str) -> None:
        """Dead letters retried or dropped (``action``: retry | drop) by ``actor``."""
        if not self.enabled:
            return
        for dl in dead_letters:
            item = dl.item
            self._ev(_mid(item), f"dlq_{action}", item=item, outbox_id=dl.id,
                     detail={"lane": item.lane, "route": item.route, "actor": actor},
                     counts={"dead": -1} if action == "retry" else {})


async def _first(*aws: Any) -> None:
    """Until the first of ``aws`` is done (the others are cancelled)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _mid(item: Any) -> str:
    mid = item.message.get("id") if isinstance(item.message, dict) else None
    return str(mid) if mid else f"outbox:{item.id}"


# -- presentation (CLI) ---------------------------------------------------------------------------------------------

def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _describe(ev: dict[str, Any]) -> str:
    d = ev.get("detail") or {}
    step = ev["step"]
    if step == "received":
        bits = [f"from {d.get('source')}"]
        if d.get("native_id"):
            bits.append(f"native id {d['native_id']}")
        if d.get("sender"):
            bits.append(f"sender {d['sender']}")
        for k in ("reply_to", "edit_of"):
            if d.get(k):
                bits.append(f"{k.replace('_', ' ')} {d[k]}")
        bits.append("dedup: new")
        return ", ".join(bits)
    if step == "duplicate":
        return f"again from {d.get('source')}: dedup says already seen, ignored"
    if step == "dropped":
        return f"dropped: {d.get('reason')}" + (f" ({d['rule']})" if d.get("rule") else "")
    if step == "queued":
        items = ", ".join(f"{i['lane']} [{i['route']}]" for i in d.get("items", []))
        return f"routes {', '.join(d.get('routes', [])) or '-'} -> {len(d.get('items', []))} outbox item(s): {items}"
    where = f"{d.get('lane')} [{d.get('route')}]"
    if step == "delivered":
        extra = "".join(f", {k.replace('_', ' ')} {d[k]}" for k in ("reply_to", "edit_of") if d.get(k))
        return (f"delivered to {where}, attempt {d.get('attempt')}, native id(s) "
                f"{', '.join(d.get('native_ids', [])) or '-'} ({d.get('parts')} part(s), {d.get('took_ms')} ms){extra}")
    if step in ("failed", "dead_letter"):
        extra = f", retry-after {d['retry_after']:g}s" if d.get("retry_after") is not None else ""
        nxt = f", next attempt {_when(d['next_at'])}" if d.get("next_at") else ""
        head = "dead-lettered" if step == "dead_letter" else "attempt failed"
        return f"{head}: {where}, attempt {d.get('attempt')}: {d.get('error')}{extra}{nxt}"
    if step in ("dlq_retry", "dlq_drop"):
        return f"dead letter {'retried' if step == 'dlq_retry' else 'dropped'} by {d.get('actor')}: {where}"
    return str(d)


def format_timeline(trace: dict[str, Any]) -> str:
    """A human timeline of ``store.trace_get`` output."""
    s = trace["summary"]
    lines = [f"message {s['message_id']}  status: {s['status']}",
             (f"  origin {s.get('origin') or '-'}  sender {s.get('sender') or '-'}  routes "
             f"{', '.join(s.get('routes') or []) or '-'}  delivered {s['delivered']}/{s['dests']}")]
    for ev in trace["events"]:
        oid = f" #{ev['outbox_id']}" if ev.get("outbox_id") is not None else ""
        lines.append(f"  {_when(ev['ts'])}  {ev['step']:<11}{oid}  {_describe(ev)}")
    if s.get("events_truncated"):
        lines.append(f"  (later events not kept: too many for one message; {s['failed']} failed attempt(s) counted)")
    return "\n".join(lines)
