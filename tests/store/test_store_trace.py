"""Message trace in the store and the recorder: events, summaries, lookups, search, retention, batching.
On both backends (``store`` / ``backend`` / ``clock`` come from conftest.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from claudemesh_gateway.messages import Address, Message
from claudemesh_gateway.store.base import OutboxItem, TraceEvent
from claudemesh_gateway.store.tracerows import TRACE_EVENTS_MAX
from claudemesh_gateway.trace import TraceRecorder, TraceSettings, format_timeline

from .conftest import Backend, Clock

DAY = 86400.0


def _msg(mid: str = "mesh:dev:abc123", native: str | None = "abc123", sender: str = "alice") -> Message:
    return Message(id=mid, origin=Address("mesh", "dev:#ops"), sender=sender, sender_id=f"{sender}-key",
                   text="SECRET BODY never traced", native_id=native)


def _item(mid: str, lane: str = "telegram/42", oid: int = 7) -> OutboxItem:
    return OutboxItem(id=oid, lane=lane, route="ops", destination={}, message={"id": mid, "text": "SECRET BODY"})


async def test_trace_records_a_journey_and_finds_it_by_every_id(store, clock: Clock) -> None:
    rec = TraceRecorder(store, clock=clock)
    m = _msg()
    rec.received(m)
    rec.queued(m, [(Address("telegram", "42"), "ops"), (Address("slack", "C1"), "ops")], ["ops"])
    clock.t += 1
    rec.failed(_item(m.id), attempt=1, error="HTTP 429", retry_after=3.0, next_at=clock.t + 3, permanent=False)
    clock.t += 3
    rec.delivered(_item(m.id), attempt=2, native_ids=["tg-555"], parts=1, took=0.012, reply_to="tg-1")
    rec.failed(_item(m.id, "slack/C1", 8), attempt=5, error="channel_not_found", retry_after=None,
               next_at=None, permanent=True)
    await rec.flush()

    t = await store.trace_get(m.id)
    assert t is not None
    assert [e["step"] for e in t["events"]] == ["received", "queued", "failed", "delivered", "dead_letter"]
    s = t["summary"]
    assert s["status"] == "dead_letter" and s["dests"] == 2 and s["delivered"] == 1 and s["dead"] == 1
    assert s["origin"] == "mesh/dev:#ops" and s["sender"] == "alice-key" and s["routes"] == ["ops"]
    assert s["lanes"] == ["telegram/42", "slack/C1"]
    assert t["events"][2]["detail"]["retry_after"] == 3.0 and t["events"][2]["outbox_id"] == 7
    assert t["events"][3]["detail"]["native_ids"] == ["tg-555"] and t["events"][3]["detail"]["reply_to"] == "tg-1"
    # never the text
    assert "SECRET" not in repr(t)

    for key in (m.id, "abc123", "tg-555", "7", "8"):
        assert await store.trace_resolve(key) == [m.id], key
    assert await store.trace_resolve("nope") == []
    text = format_timeline(t)
    assert "dead-lettered: slack/C1 [ops], attempt 5: channel_not_found" in text
    assert "retry-after 3s" in text and "native id(s) tg-555" in text


async def test_trace_resolve_finds_a_queued_item_by_outbox_id(store) -> None:
    rec = TraceRecorder(store)
    item = OutboxItem(lane="telegram/1", route="r", destination={}, message={"id": "wh:1"})
    assert await store.accept("wh:1", [item])
    rec.received(Message(id="wh:1", origin=Address("wh", "in"), sender="x", text="t"))
    await rec.flush()
    (head,) = await store.peek("telegram/1")
    assert await store.trace_resolve(str(head.id)) == ["wh:1"]


async def test_trace_search_filters(store, clock: Clock) -> None:
    rec = TraceRecorder(store, clock=clock)
    a, b = _msg("mesh:dev:a", "a"), _msg("mesh:dev:b", "b", sender="bob")
    rec.received(a)
    rec.queued(a, [(Address("telegram", "42"), "ops")])
    clock.t += 100
    rec.received(b)
    rec.dropped_message(b, "denied", "sender refused by route(s) ops")
    await rec.flush()
    ids = lambda rows: [r["message_id"] for r in rows]
    assert ids(await store.trace_search()) == ["mesh:dev:b", "mesh:dev:a"]  # newest first
    assert ids(await store.trace_search(route="ops")) == ["mesh:dev:a"]
    assert ids(await store.trace_search(route="op")) == []  # a whole route name, not a substring
    assert ids(await store.trace_search(chat="telegram/42")) == ["mesh:dev:a"]
    assert ids(await store.trace_search(chat="#ops")) == ["mesh:dev:b", "mesh:dev:a"]
    assert ids(await store.trace_search(sender="bob-key")) == ["mesh:dev:b"]
    assert ids(await store.trace_search(status="dropped")) == ["mesh:dev:b"]
    assert ids(await store.trace_search(status="queued")) == ["mesh:dev:a"]
    assert ids(await store.trace_search(since=clock.t - 50)) == ["mesh:dev:b"]
    assert ids(await store.trace_search(until=clock.t - 50)) == ["mesh:dev:a"]
    assert ids(await store.trace_search(q="a")) == ["mesh:dev:a"]  # by native id
    assert ids(await store.trace_search(q="a", route="nope")) == []
    assert ids(await store.trace_search(q="SECRET")) == []  # no text search: there is no text
    # also=: ids that match q otherwise (the admin API's in-memory text matches), the filters still apply
    assert ids(await store.trace_search(q="SECRET", also=["mesh:dev:b"])) == ["mesh:dev:b"]
    assert ids(await store.trace_search(q="a", also=["mesh:dev:b", "gone"])) == ["mesh:dev:b", "mesh:dev:a"]
    assert ids(await store.trace_search(q="SECRET", also=["mesh:dev:b"], status="queued")) == []
    dropped = await store.trace_get("mesh:dev:b")
    assert dropped["events"][-1]["detail"] == {"reason": "denied", "rule": "sender refused by route(s) ops"}
    rec.dropped_message(b, "denied", "r", ["ops"])
    await rec.flush()
    assert ids(await store.trace_search(route="ops")) == ["mesh:dev:b", "mesh:dev:a"]  # the routes that refused it


async def test_trace_odd_ids_are_kept_and_never_break_a_lookup(store) -> None:
    # a NUL (PostgreSQL text refuses it) in a sender or native id; a key of non-ASCII digits
    rec = TraceRecorder(store)
    rec.received(_msg("wh:odd", native="n\x00ul", sender="a\x00b"))
    rec.received(_msg("wh:plain", native="plain"))
    await rec.flush()
    assert rec.dropped == 0 and rec.written == 2
    t = await store.trace_get("wh:odd")
    assert t is not None and t["summary"]["sender"].startswith("a") and "b" in t["summary"]["sender"]
    assert await store.trace_resolve("plain") == ["wh:plain"]
    assert await store.trace_resolve("\u00b2") == []  # "²".isdigit() is True, int("²") is not a number
    assert await store.trace_search(q="\u0661\u0662") == []  # Arabic-Indic digits


async def test_trace_dlq_retry_clears_the_dead_letter_status(store) -> None:
    rec = TraceRecorder(store)
    m = _msg()
    rec.queued(m, [(Address("telegram", "42"), "ops")])
    rec.failed(_item(m.id), attempt=1, error="boom", retry_after=None, next_at=None, permanent=True)
    rec.dlq("retry", [SimpleNamespace(id=7, item=_item(m.id))], "admin")
    await rec.flush()
    assert (await store.trace_get(m.id))["summary"]["status"] == "retrying"  # back in the outbox
    rec.delivered(_item(m.id, oid=9), attempt=1, native_ids=["n"], parts=1, took=0.0)
    await rec.flush()
    t = await store.trace_get(m.id)
    assert t["summary"]["status"] == "delivered"
    assert t["events"][2]["step"] == "dlq_retry" and t["events"][2]["detail"]["actor"] == "admin"


async def test_trace_retention_prunes_whole_messages(backend: Backend, clock: Clock) -> None:
    s = backend.make(clock=clock, purge_interval=0, trace_ttl=2 * DAY)
    await s.open()
    try:
        rec = TraceRecorder(s, clock=clock)
        old, new = _msg("mesh:dev:old", "old"), _msg("mesh:dev:new", "new")
        rec.received(old)
        clock.t += 1.5 * DAY
        rec.received(new)
        rec.queued(old, [(Address("telegram", "1"), "ops")])  # a later event keeps "old" alive
        await rec.flush()
        clock.t += 1 * DAY
        assert (await s.purge())["trace"] == 0  # both had an event within 2 days
        clock.t += 1.1 * DAY
        assert (await s.purge())["trace"] == 2
        assert await s.trace_get("mesh:dev:old") is None and await s.trace_resolve("new") == []
        counts = [await backend.scalar(f"SELECT COUNT(*) FROM {t}") for t in ("trace_messages", "trace_keys")]
        assert counts == [0, 0]
    finally:
        await s.close()
    with pytest.raises(ValueError):
        backend.make(trace_ttl=0)
    assert TraceSettings().retention_days == 7.0


async def test_trace_purge_is_chunked(store, clock: Clock) -> None:
    rec = TraceRecorder(store, clock=clock)
    for i in range(23):
        rec.received(_msg(f"mesh:dev:{i}", str(i)))
    await rec.flush()
    clock.t += 8 * DAY
    assert (await store.purge(chunk=5))["trace"] == 23


async def test_recorder_batches_many_events_into_one_write(store) -> None:
    calls: list[int] = []
    real = store.trace_write

    async def spy(events):
        calls.append(len(events))
        await real(events)

    store.trace_write = spy  # type: ignore[method-assign]
    rec = TraceRecorder(store, flush_interval=0.05)
    rec.start()
    try:
        for i in range(200):
            rec.received(_msg(f"mesh:dev:{i}", str(i)))
        while sum(calls) < 200:  # noqa: ASYNC110 - the writer task runs on its own timer
            await asyncio.sleep(0.01)
    finally:
        await rec.stop()
    assert calls == [200]  # one write (one store operation in a shared commit), not one per message
    assert rec.written == 200 and len(await store.trace_search(limit=500)) == 200


async def test_recorder_off_costs_nothing_and_writes_nothing(store) -> None:
    rec = TraceRecorder(store, enabled=False)
    seen = []
    rec.subscribe(seen.append)
    rec.start()
    rec.received(_msg())
    rec.queued(_msg(), [(Address("telegram", "42"), "ops")])
    await rec.stop()
    assert seen == [] and rec.written == 0 and await store.trace_search() == []
    assert not TraceRecorder(object()).enabled  # a store without a trace: off


async def test_recorder_keeps_going_when_a_write_fails(store) -> None:
    rec = TraceRecorder(store)

    async def broken(events):
        raise RuntimeError("disk on fire")

    real, store.trace_write = store.trace_write, broken  # type: ignore[method-assign]
    rec.received(_msg("mesh:dev:1", "1"))
    await rec.flush()
    assert rec.dropped == 1
    store.trace_write = real  # type: ignore[method-assign]
    rec.received(_msg("mesh:dev:2", "2"))
    await rec.flush()
    assert rec.written == 1 and await store.trace_resolve("2") == ["mesh:dev:2"]


async def test_recorder_live_listeners(store) -> None:
    rec = TraceRecorder(store)
    seen: list[TraceEvent] = []
    unsubscribe = rec.subscribe(seen.append)
    rec.received(_msg())
    unsubscribe()
    rec.received(_msg("mesh:dev:2"))
    assert [e.message_id for e in seen] == ["mesh:dev:abc123"]


async def test_a_message_retried_for_hours_keeps_a_bounded_trace(store, backend: Backend, clock: Clock) -> None:
    rec = TraceRecorder(store, clock=clock)
    m = _msg()
    rec.received(m)
    rec.queued(m, [(Address("telegram", "42"), "ops")])
    await rec.flush()
    assert (await store.trace_get(m.id))["summary"]["events_truncated"] is False
    for n in range(1500):  # a 429 storm: an answer every few seconds for an hour
        clock.t += 3
        rec.failed(_item(m.id), attempt=1, error="HTTP 429: Too Many Requests", retry_after=3.0,
                   next_at=clock.t + 3, permanent=False)
        if n % 100 == 0:
            await rec.flush()
    await rec.flush()
    t = await store.trace_get(m.id)
    assert t["summary"]["events_truncated"] is True and t["summary"]["failed"] == 1500  # counters go on
    assert 100 < len(t["events"]) < 1500 and t["events"][0]["step"] == "received"
    assert "later events not kept" in format_timeline(t)
    size = await backend.scalar("SELECT length(events) FROM trace_messages")
    assert size < TRACE_EVENTS_MAX + 100 * 300  # at most one more flush's worth past the cap
