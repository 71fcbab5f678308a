"""DeliveryEngine against SqliteStore and a fake transport, on a virtual clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from claudemesh_gateway.errors import DeliveryError
from claudemesh_gateway.events import DeliveryFailed, MessageDelivered
from claudemesh_gateway.gateway import RateLimit
from claudemesh_gateway.store.sqlite import SqliteStore

FakeTransport = make_item = run_virtual = until = None  # bound from the ``dh`` fixture


@pytest.fixture(autouse=True)
def _helpers(dh):
    global FakeTransport, make_item, run_virtual, until
    FakeTransport, make_item, run_virtual, until = dh.FakeTransport, dh.make_item, dh.run_virtual, dh.until


async def accept_all(store: SqliteStore, items) -> None:
    for it in items:
        assert await store.accept(f"in:{it.message['id']}:{it.lane}", [it])


async def test_delivery_per_lane_order_one_in_flight(store, transport, make_engine, events) -> None:
    lanes = ["telegram/1", "slack/C2", "mesh/m:#ops"]
    await accept_all(store, [make_item(lanes[i % 3], f"m{i}") for i in range(90)])
    eng = make_engine(prefetch=4)
    await eng.start()
    await until(lambda: len(transport.sent) == 90, what="90 sends")
    for k, lane in enumerate(lanes):
        assert transport.ids(lane) == [f"m{i}" for i in range(k, 90, 3)]
    assert transport.max_in_flight_per_lane == 1
    assert transport.max_lanes_in_flight > 1  # lanes do run concurrently
    await until(lambda: eng.stats()["active_lanes"] == 0, what="lanes idle")
    assert await store.outbox_count() == 0
    delivered = [e for e in events if isinstance(e, MessageDelivered)]
    assert len(delivered) == 90 and len(transport.delivered_calls) == 90
    assert {e.to.key for e in delivered} == set(lanes)
    assert all(e.latency_s >= 0 and e.route == "ops" and len(e.native_ids) == 1 for e in delivered)
    assert eng.stats()["delivered"] == 90 and eng.stats()["last_activity"] > 0


async def test_delivery_retry_after_pauses_only_that_lane(
    store, transport, make_engine, events, vclock
) -> None:
    calls = {"n": 0}

    def on_send(out):
        if out.to.key == "telegram/A":
            calls["n"] += 1
            if calls["n"] == 1:
                raise DeliveryError("429 Too Many Requests", retry_after=30)

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/A", "a1"), make_item("telegram/A", "a2")])
    await accept_all(store, [make_item("telegram/B", f"b{i}") for i in range(10)])
    eng = make_engine()
    await eng.start()
    # B flows completely while A waits: no virtual time passes at all
    await until(lambda: len(transport.ids("telegram/B")) == 10 and eng.stats()["failed_transient"] == 1,
                what="lane B delivered and A's 429 recorded")
    assert transport.ids("telegram/A") == []
    head = await store.head("telegram/A")
    assert head is not None and head.message["id"] == "a1"
    assert head.not_before == vclock.time() + 30 and head.attempts == 0  # a 429 is not an attempt
    assert head.last_error == "429 Too Many Requests"
    failed = [e for e in events if isinstance(e, DeliveryFailed)]
    assert len(failed) == 1 and not failed[0].permanent and failed[0].to.key == "telegram/A"
    assert eng.stats()["retry_after"] == 1 and eng.stats()["dead_lettered"] == 0
    assert eng.stats()["http_429"] == eng.stats()["throttled"] == 1  # the names /-/metrics reads

    vclock.advance(29.5)
    await asyncio.sleep(0.05)
    assert transport.ids("telegram/A") == []  # still paused
    vclock.advance(0.5)
    await until(lambda: len(transport.ids("telegram/A")) == 2, what="lane A after its retry_after")
    assert transport.ids("telegram/A") == ["a1", "a2"]
    assert all(t >= 30 for (ln, _m, _p, t) in transport.sent if ln == "telegram/A")


async def test_delivery_shared_scope_retry_after_pauses_the_bucket(
    store, transport, make_engine, vclock
) -> None:
    class Throttled(DeliveryError):
        scope = "bot1:global"

    fired = []

    def on_send(out):
        if out.to.key == "telegram/A" and not fired:
            fired.append(1)
            raise Throttled("global flood", retry_after=10)

    transport.on_send = on_send
    transport.limits = lambda item: (
        [RateLimit(scope="bot1:global", per_second=1000, burst=1000)] if item.lane != "slack/C" else []
    )
    await accept_all(store, [make_item("telegram/A", "a1")])
    await until(lambda: True)
    eng = make_engine()
    await eng.start()
    await until(lambda: bool(fired), what="the 429")
    # B (same bot) must now wait for the paused scope; C (other bot) flows
    await accept_all(store, [make_item("telegram/B", "b1"), make_item("slack/C", "c1")])
    eng.kick("telegram/B")
    eng.kick("slack/C")
    await until(lambda: transport.ids("slack/C") == ["c1"], what="lane C")
    await asyncio.sleep(0.03)
    assert transport.ids("telegram/B") == []
    await run_virtual(vclock, lambda: transport.ids("telegram/B") == ["b1"] and transport.ids("telegram/A") == ["a1"],
                      what="A and B after the pause")
    assert min(t for (ln, _m, _p, t) in transport.sent if ln in ("telegram/A", "telegram/B")) >= 10


async def test_delivery_burst_at_the_allowed_rate(
    store, transport, make_engine, vclock
) -> None:
    rate, burst, n = 2.0, 3, 20
    transport.limits = lambda item: [RateLimit(scope=f"chat:{item.lane}", per_second=rate, burst=burst),
                                     RateLimit(scope="global", per_second=100, burst=100)]
    await accept_all(store, [make_item("telegram/1", f"m{i}") for i in range(n)])
    eng = make_engine()
    await eng.start()
    await run_virtual(vclock, lambda: len(transport.sent) == n, what="the whole burst")
    times = [t for (_l, _m, _p, t) in transport.sent]
    assert transport.ids("telegram/1") == [f"m{i}" for i in range(n)]
    assert times[:burst] == [0.0] * burst  # the burst goes out at once
    for i, t in enumerate(times):  # then never faster than the rate
        assert t >= (i + 1 - burst) / rate - 1e-6, (i, t)
    assert eng.stats()["rate_limit_waits"] >= n - burst
    assert eng.stats()["retry_after"] == 0


async def test_delivery_shared_bucket_is_fair_between_lanes(
    store, transport, make_engine, vclock
) -> None:
    transport.limits = lambda item: [RateLimit(scope="bot:global", per_second=1, burst=1)]
    await accept_all(store, [make_item(f"telegram/{c}", f"{c}{i}") for i in range(6) for c in "XY"])
    eng = make_engine()
    await eng.start()
    await run_virtual(vclock, lambda: len(transport.sent) == 12, what="both lanes")
    first = [ln for (ln, _m, _p, _t) in transport.sent[:8]]
    assert first.count("telegram/X") >= 3 and first.count("telegram/Y") >= 3
    times = sorted(t for (_l, _m, _p, t) in transport.sent)
    assert all(b - a >= 1 - 1e-6 for a, b in itertools.pairwise(times))  # the shared rate holds


async def test_delivery_permanent_failure_dead_letters_and_lane_goes_on(
    store, transport, make_engine, events
) -> None:
    await accept_all(store, [make_item("nope/1", "x1"), make_item("nope/1", "x2")])

    def on_send(out):
        if out.message.id == "p1":
            raise DeliveryError("chat not found", permanent=True)

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/9", "p1"), make_item("telegram/9", "p2")])
    eng = make_engine()
    await eng.start()
    await until(lambda: transport.ids("telegram/9") == ["p2"], what="p2 after p1 failed")
    await until(lambda: eng.stats()["dead_lettered"] == 3, what="3 dead letters")
    dl = {d.item.message["id"]: d for d in await store.dlq_list()}
    assert set(dl) == {"x1", "x2", "p1"}
    assert dl["p1"].reason == "chat not found" and dl["x1"].reason == "unknown gateway 'nope'"
    failed = [e for e in events if isinstance(e, DeliveryFailed)]
    assert {(e.message.id, e.permanent) for e in failed} == {("x1", True), ("x2", True), ("p1", True)}
    assert sorted(p for (_i, _e, p) in transport.failed_calls) == [True, True, True]
    assert await store.dlq_count() == 3


async def test_delivery_backoff_then_dead_letter_then_dlq_retry(
    store, transport, make_engine, vclock, events
) -> None:
    state = {"down": True}

    def on_send(out):
        if state["down"]:
            raise DeliveryError("502 Bad Gateway")

    transport.on_send = on_send
    await accept_all(store, [make_item("slack/C1", "s1")])
    eng = make_engine(max_attempts=3, backoff_base=1.0, backoff_factor=2.0)
    await eng.start()
    await run_virtual(vclock, lambda: eng.stats()["dead_lettered"] == 1, what="dead letter")
    assert [t for (_l, _m, _p, t) in transport.attempts] == [0.0, 1.0, 3.0]  # base 1, factor 2, no jitter
    (dl,) = await store.dlq_list()
    assert dl.reason == "gave up after 3 attempts: 502 Bad Gateway" and dl.item.attempts == 2
    flags = [e.permanent for e in events if isinstance(e, DeliveryFailed)]
    assert flags == [False, False, True]
    assert transport.sent == []

    state["down"] = False
    assert await store.dlq_retry() == 1
    back = await store.head("slack/C1")
    assert back is not None and back.attempts == 0 and back.not_before == 0
    eng.kick()  # new ids since the last look: no full rescan needed
    await until(lambda: transport.ids("slack/C1") == ["s1"], what="delivery after dlq retry")
    await until(lambda: eng.stats()["active_lanes"] == 0)
    assert await store.dlq_count() == 0 and await store.outbox_count() == 0


async def test_delivery_unexpected_errors_are_transient_but_capped(
    store, transport, make_engine, vclock
) -> None:
    def on_send(out):
        raise KeyError("bug")

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/5", "u1")])
    eng = make_engine(max_attempts=10, max_attempts_unexpected=2)
    await eng.start()
    await run_virtual(vclock, lambda: eng.stats()["dead_lettered"] == 1, what="dead letter")
    assert len(transport.attempts) == 2
    (dl,) = await store.dlq_list()
    assert dl.reason.startswith("gave up after 2 attempts: KeyError")
    assert eng.stats()["unexpected_errors"] == 2


async def test_delivery_max_age_dead_letters(store, transport, make_engine, vclock) -> None:
    transport.on_send = lambda out: (_ for _ in ()).throw(DeliveryError("timeout"))
    await accept_all(store, [make_item("telegram/5", "old")])
    eng = make_engine(max_attempts=1000, max_age=100.0, backoff_base=30, backoff_cap=30)
    await eng.start()
    await run_virtual(vclock, lambda: eng.stats()["dead_lettered"] == 1, what="dead letter by age")
    (dl,) = await store.dlq_list()
    assert "in the outbox" in dl.reason and len(transport.attempts) == 5  # t=0,30,60,90,120


async def test_delivery_mid_split_crash_resumes_at_next_part(
    store, transport, make_engine, vclock
) -> None:
    hang = asyncio.Event()

    async def on_send(out):
        if out.part == 3:
            await hang.wait()  # the process "dies" while sending part 3

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/7", "long", parts=4), make_item("telegram/7", "next")])
    eng = make_engine()
    await eng.start()
    await until(lambda: len(transport.attempts) == 3, what="part 3 in flight")
    assert eng.in_flight() == {"telegram/7": (await store.head("telegram/7")).id}  # type: ignore[union-attr]
    await eng.stop(drain_timeout=0.01)  # crash: part 3 never completes
    head = await store.head("telegram/7")
    assert head is not None and head.progress == 2 and head.message["id"] == "long"

    first_ids = [c for c in transport.delivered_calls]
    assert first_ids == []  # nothing completed before the crash
    fresh = FakeTransport(vclock)
    fresh._n = 100
    eng2 = make_engine(fresh)
    await eng2.start()
    await until(lambda: len(fresh.sent) == 3, what="resume")
    assert [(m, p) for (_l, m, p, _t) in fresh.sent] == [("long", 3), ("long", 4), ("next", 1)]
    # the message map gets the ids of all four parts, including the two sent before the crash
    await until(lambda: len(fresh.delivered_calls) == 2)
    assert fresh.delivered_calls[0][1] == [("n1",), ("n2",), ("n101",), ("n102",)]
    await until(lambda: eng2.stats()["active_lanes"] == 0)
    assert await store.outbox_count() == 0


async def test_delivery_stop_drains_in_flight_and_leaves_rest_queued(
    store, transport, make_engine
) -> None:
    release = asyncio.Event()

    async def on_send(out):
        await release.wait()

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/1", f"m{i}") for i in range(5)])
    await accept_all(store, [make_item("telegram/2", "w1")])
    transport.limits = lambda item: [RateLimit(scope="t2", per_second=0.001, burst=1)] if item.lane == "telegram/2" else []
    await store.accept("pre", [make_item("telegram/2", "w0")])
    eng = make_engine()
    await eng.start()
    await until(lambda: len(transport.attempts) == 2, what="both lanes sending")
    stopper = asyncio.create_task(eng.stop(drain_timeout=5))
    await asyncio.sleep(0.02)
    assert not stopper.done()  # waits for the in-flight sends
    release.set()
    await asyncio.wait_for(stopper, 5)
    assert transport.ids("telegram/1") == ["m0"]  # the in-flight one finished, no new item was taken
    remaining = await store.outbox_depths()
    assert remaining["telegram/1"][0] == 4
    assert transport.ids("telegram/2") == ["w1"]
    assert remaining["telegram/2"][0] == 1  # w0 (it would have waited for a token) stays queued
    assert eng.in_flight() == {}
    eng.kick("telegram/1")  # ignored once stopped
    await asyncio.sleep(0.02)
    assert len(transport.sent) == 2


async def test_delivery_stop_cancels_after_drain_timeout(store, transport, make_engine) -> None:
    async def on_send(out):
        await asyncio.Event().wait()

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/1", "m0")])
    eng = make_engine()
    await eng.start()
    await until(lambda: len(transport.attempts) == 1)
    await asyncio.wait_for(eng.stop(drain_timeout=0.05), 5)
    assert transport.sent == [] and await store.outbox_count() == 1


async def test_delivery_restart_picks_up_queued_and_backed_off_items(
    store, transport, make_engine, vclock
) -> None:
    await accept_all(store, [make_item(f"telegram/{i % 4}", f"m{i}") for i in range(12)])
    await accept_all(store, [make_item("slack/L", "later")])
    later = await store.head("slack/L")
    assert later is not None
    await store.reschedule(later.id, not_before=vclock.time() + 60, attempts=1, error="x")
    eng = make_engine()
    await eng.start()  # no kick: start looks at the whole outbox
    await until(lambda: len(transport.sent) == 12, what="queued items")
    assert transport.ids("slack/L") == []
    # the engine's timer for the backed-off head fires at t=60 (the safety poll is at 1000)
    await run_virtual(vclock, lambda: transport.ids("slack/L") == ["later"], what="backed-off item")
    assert [t for (ln, _m, _p, t) in transport.sent if ln == "slack/L"] == [60.0]


async def test_delivery_kick_wakes_without_polling(store, transport, make_engine) -> None:
    await store.accept("k0", [make_item("telegram/3", "k0")])
    eng = make_engine()
    await eng.start()
    await until(lambda: transport.ids("telegram/3") == ["k0"], what="start-up scan")  # first poll is over
    await until(lambda: eng.stats()["active_lanes"] == 0)
    await store.accept("k1", [make_item("telegram/3", "k1")])
    await asyncio.sleep(0.05)
    assert transport.ids("telegram/3") == ["k0"]  # nothing polls in a busy loop
    eng.kick("telegram/3")
    await until(lambda: transport.ids("telegram/3") == ["k0", "k1"], what="kicked lane")
    await store.accept("k2", [make_item("telegram/4", "k2")])
    eng.kick()
    await until(lambda: transport.ids("telegram/4") == ["k2"], what="kick all")


async def test_delivery_concurrency_cap(store, transport, make_engine) -> None:
    gate = asyncio.Event()

    async def on_send(out):
        await gate.wait()

    transport.on_send = on_send
    await accept_all(store, [make_item(f"telegram/{i}", f"m{i}") for i in range(6)])
    eng = make_engine(concurrency=2)
    await eng.start()
    await until(lambda: len(transport.attempts) == 2)
    await asyncio.sleep(0.02)
    assert len(transport.attempts) == 2 and eng.stats()["waiting_lanes"] == 4
    assert len(eng.in_flight()) == 2
    gate.set()
    await until(lambda: len(transport.sent) == 6, what="all lanes")
    assert transport.max_lanes_in_flight == 2


async def test_delivery_queue_depths_and_describe(store, transport, make_engine) -> None:
    await accept_all(store, [make_item("telegram/1", "a"), make_item("telegram/1", "b")])
    eng = make_engine()
    depths = await eng.queue_depths()
    assert depths["telegram/1"][0] == 2
    d = eng.describe()
    assert d["delivered"] == 0 and d["in_flight"] == {} and "rate_limit_waits" in d


class ProtocolOnlyStore:
    """Exposes only the Store protocol (no peek/next_due/complete_many/lanes_after) to test the fallbacks."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        if name in ("peek", "next_due", "complete_many", "lanes_after", "max_id", "sent_parts",
                    "acquire_delivery_lock", "release_delivery_lock"):
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_delivery_works_with_a_protocol_only_store(store, transport, make_engine, vclock) -> None:
    thin = ProtocolOnlyStore(store)
    assert not hasattr(thin, "peek") and hasattr(thin, "head")
    await accept_all(store, [make_item(f"telegram/{i % 3}", f"m{i}") for i in range(9)])
    await accept_all(store, [make_item("telegram/0", "split", parts=3)])
    eng = make_engine(st=thin)
    await eng.start()
    await until(lambda: len(transport.sent) == 12, what="delivery through the protocol only")
    for k in range(1, 3):
        assert transport.ids(f"telegram/{k}") == [f"m{i}" for i in range(k, 9, 3)]
    assert transport.ids("telegram/0") == ["m0", "m3", "m6", "split", "split", "split"]
    await store.accept("late", [make_item("telegram/9", "late")])
    eng.kick()  # falls back to a full rescan
    await until(lambda: transport.ids("telegram/9") == ["late"], what="kick with a full rescan")
    await until(lambda: eng.stats()["active_lanes"] == 0)
    assert await store.outbox_count() == 0


async def test_delivery_rendered_to_nothing_is_removed_silently(store, transport, make_engine, events) -> None:
    orig = transport.render

    async def render(item):
        outs, limits = await orig(item)
        return ([] if item.message["id"] == "skip" else outs), limits

    transport.render = render
    await accept_all(store, [make_item("telegram/1", "skip"), make_item("telegram/1", "keep")])
    eng = make_engine()
    await eng.start()
    await until(lambda: transport.ids("telegram/1") == ["keep"])
    await until(lambda: eng.stats()["active_lanes"] == 0)
    assert await store.outbox_count() == 0
    assert [e.message.id for e in events if isinstance(e, MessageDelivered)] == ["keep"]


async def test_delivery_hung_send_times_out_and_is_retried(store, transport, make_engine, vclock, events) -> None:
    calls = {"n": 0}

    async def on_send(out):
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.Event().wait()  # the vendor never answers

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/1", "h1")])
    eng = make_engine(send_timeout=0.05)
    await eng.start()
    await until(lambda: eng.stats()["failed_transient"] == 1, what="the timeout")
    head = await store.head("telegram/1")
    assert head is not None and head.attempts == 1 and head.last_error == "send timed out after 0.05s"
    assert [e.error for e in events if isinstance(e, DeliveryFailed)] == ["send timed out after 0.05s"]
    await run_virtual(vclock, lambda: transport.ids("telegram/1") == ["h1"], what="the retry")


async def test_delivery_one_deliverer_per_store(store, tmp_path, make_engine) -> None:
    from claudemesh_gateway.errors import StartupError

    eng = make_engine()
    await eng.start()
    other = SqliteStore(store.path, purge_interval=0)  # a second process opening the same file
    await other.open()
    try:
        with pytest.raises(StartupError, match="already delivering"):
            await make_engine(st=other).start()
        await other.kv_set("tools", "ok", 1)  # tools (dlq, backup) still work alongside
        await eng.stop(0)
        second = make_engine(st=other)
        await second.start()  # the lock is free once the first engine stopped
        await second.stop(0)
    finally:
        await other.close()


async def test_delivery_retry_after_zero_is_floored(store, transport, make_engine, vclock) -> None:
    def on_send(out):
        if len(transport.attempts) <= 3:
            raise DeliveryError("429", retry_after=0)

    transport.on_send = on_send
    await accept_all(store, [make_item("telegram/1", "z")])
    eng = make_engine(retry_after_floor=2.0)
    await eng.start()
    await run_virtual(vclock, lambda: transport.ids("telegram/1") == ["z"], what="delivery after 3 throttles")
    assert [t for (_l, _m, _p, t) in transport.attempts] == [0.0, 2.0, 4.0, 6.0]
    assert eng.stats()["retry_after"] == 3 and eng.stats()["dead_lettered"] == 0
