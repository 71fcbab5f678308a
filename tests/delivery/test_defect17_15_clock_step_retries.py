"""Issue 17 item 15: retries are timed on the monotonic clock. A backwards step of the wall clock
(NTP correcting a clock that ran fast) must not stall a pending retry by the size of the step, and
a forward step must not fire it early; the wall-clock ``not_before`` is only for a restart.
"""

from __future__ import annotations

from claudemesh_gateway.errors import DeliveryError

STEP = 3600.0  # one hour


async def _one_failing_then_ok(store, transport, dh, lane: str = "telegram/1") -> dict[str, int]:
    calls = {"n": 0}

    def on_send(out):
        calls["n"] += 1
        if calls["n"] == 1:
            raise DeliveryError("503 from the vendor")

    transport.on_send = on_send
    assert await store.accept("in:a", [dh.make_item(lane, "a")])
    return calls


async def test_defect17_15_backwards_step_does_not_stall_the_retry(store, transport, make_engine, vclock, dh) -> None:
    calls = await _one_failing_then_ok(store, transport, dh)
    eng = make_engine(backoff_base=10.0, backoff_cap=10.0)
    await eng.start()
    await dh.until(lambda: calls["n"] == 1, what="first attempt")
    await dh.until(lambda: vclock.next_deadline() is not None and vclock.next_deadline() > 0, what="retry timer")
    head = await store.head("telegram/1")
    assert head is not None and head.attempts == 1
    assert head.not_before == vclock.time() + 10.0  # persisted as wall-clock time, for a restart
    vclock.base -= STEP  # the wall clock steps back one hour; monotonic time goes on
    # the retry comes 10 s (monotonic) after the failure, not an hour later
    await dh.run_virtual(vclock, lambda: transport.ids("telegram/1") == ["a"], what="the retry", limit=60.0)
    assert [t for (_l, _m, _p, t) in transport.sent] == [10.0]
    await dh.until(lambda: eng.stats()["active_lanes"] == 0)
    assert await store.outbox_count() == 0


async def test_defect17_15_forward_step_does_not_hurry_the_retry(store, transport, make_engine, vclock, dh) -> None:
    calls = await _one_failing_then_ok(store, transport, dh)
    eng = make_engine(backoff_base=10.0, backoff_cap=10.0)
    await eng.start()
    await dh.until(lambda: calls["n"] == 1, what="first attempt")
    vclock.base += STEP  # the wall clock jumps an hour ahead: the stored not_before is long past
    eng.kick(full=True)  # a rescan sees the lane as ready by its wall-clock not_before
    await dh.until(lambda: eng.stats()["active_lanes"] == 0, what="lane parked")
    assert transport.ids("telegram/1") == []
    await dh.run_virtual(vclock, lambda: transport.ids("telegram/1") == ["a"], what="the retry", limit=60.0)
    assert [t for (_l, _m, _p, t) in transport.sent] == [10.0]


async def test_defect17_15_restart_uses_the_persisted_wall_clock_deadline(store, transport, make_engine, vclock,
                                                                           dh) -> None:
    assert await store.accept("in:b", [dh.make_item("telegram/2", "b")])
    head = await store.head("telegram/2")
    assert head is not None
    await store.reschedule(head.id, not_before=vclock.time() + 30.0, attempts=1, error="earlier run")
    eng = make_engine()
    await eng.start()
    await dh.run_virtual(vclock, lambda: transport.ids("telegram/2") == ["b"], what="the retry", limit=60.0)
    assert [t for (_l, _m, _p, t) in transport.sent] == [30.0]
