"""Issue 17 item 2: a delivered item is recorded (removed from the outbox) before its lane sends the
next one, not once per prefetch batch. A crash then re-sends at most the one item per lane that
was in flight, also on a slow (60/min) lane where a prefetch batch spans half a minute.

What a crash would leave behind is what the store has committed: the tests read it (through the
store's own reader connection) while a send hangs, which is the moment a SIGKILL would land.
"""

from __future__ import annotations

import asyncio

from claudemesh_gateway.gateway import RateLimit
from claudemesh_gateway.store.sqlite import SqliteStore

PREFETCH = 32


async def _accept(store: SqliteStore, items) -> None:
    for it in items:
        assert await store.accept(f"in:{it.message['id']}", [it])


async def _queued(store: SqliteStore, lane: str) -> list[str]:
    return [i.message["id"] for i in await store.peek(lane, 1000)]


async def test_defect17_2_mesh_rate_lane_keeps_only_the_item_in_flight(store, transport, make_engine, vclock,
                                                                      dh) -> None:
    lane = "mesh/dev:#general"
    await _accept(store, [dh.make_item(lane, f"m{i:02d}") for i in range(20)])
    # the broker's member budget: 60 a minute, burst 10 (a prefetch batch of 32 spans ~22 s)
    transport.limits = lambda item: [RateLimit(scope="mesh:dev:member", per_second=1.0, burst=10)]
    hang = asyncio.Event()

    async def on_send(out):
        if out.message.id == "m14":
            await hang.wait()  # the process is killed while this one is being sent

    transport.on_send = on_send
    eng = make_engine(prefetch=PREFETCH)
    await eng.start()
    await dh.run_virtual(vclock, lambda: len(transport.attempts) == 15, what="m14 in flight")
    assert transport.ids(lane) == [f"m{i:02d}" for i in range(14)]
    # a crash now re-sends exactly the item being sent: the 14 before it are recorded
    assert (await _queued(store, lane))[0] == "m14"
    assert len(await _queued(store, lane)) == 6
    hang.set()
    await dh.run_virtual(vclock, lambda: len(transport.sent) == 20, what="the rest")
    await dh.until(lambda: eng.stats()["active_lanes"] == 0, what="lane idle")
    assert await store.outbox_count() == 0


async def test_defect17_2_each_item_recorded_before_the_next_send(store, transport, make_engine, dh) -> None:
    lanes = ["webhook/out", "telegram/1"]
    await _accept(store, [dh.make_item(lanes[i % 2], f"x{i:03d}") for i in range(120)])
    seen: list[tuple[str, str, list[str]]] = []

    async def on_send(out):
        # what a SIGKILL during this send would leave in the store for this lane
        seen.append((out.to.key, out.message.id, await _queued(store, out.to.key)))

    transport.on_send = on_send
    eng = make_engine(prefetch=PREFETCH)
    await eng.start()
    await dh.until(lambda: len(transport.sent) == 120, what="all sent")
    await dh.until(lambda: eng.stats()["active_lanes"] == 0, what="lanes idle")
    for lane in lanes:
        sends = [(mid, queued) for (ln, mid, queued) in seen if ln == lane]
        assert len(sends) == 60
        for mid, queued in sends:
            # only the item being sent is both sent (or about to be) and still queued
            assert queued[0] == mid, (lane, mid, queued[:3])
    assert await store.outbox_count() == 0
