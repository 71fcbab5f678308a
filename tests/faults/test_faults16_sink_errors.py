"""Issue 16, faults through the whole app: the sinks fail and recover while both directions are
busy. The webhook sink answers 500 for a while, then 429 with ``Retry-After: 2``, then 200; the
mesh side is throttled by the broker (its per-member rate limit refusing sends, the mesh's 429)
during the same stretch, then lifted. Every item arrives once (a refused attempt was not
delivered, so nothing is in flight: duplicates 0), nothing goes to the dead letters, and the
webhook lane waits out each ``Retry-After`` (it is longer than the configured backoff cap)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from .harness import (
    LIFTED,
    M2W_LANE,
    GatewayProcess,
    Ledger,
    MeshPoster,
    WebhookPoster,
    free_port,
    running,
    scaled,
    sources_done,
    two_way_config,
    two_way_lanes,
    within,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(within(300))]

N_500, N_429, RETRY_AFTER = 20, 4, 2


async def test_faults16_sink_500s_then_429_retry_after_then_recovery_nothing_lost(tmp_path, dev_broker, sink,
                                                                                  alice):
    n_mesh, n_hooks = scaled(150), scaled(150)
    answers: list[tuple[float, int]] = []  # (loop time, status) of every attempt at the webhook sink
    phase = {"name": "ok"}
    loop = asyncio.get_running_loop()

    def script(body: dict, attempt: int) -> tuple[int, dict[str, str]]:
        if phase["name"] == "500" and sum(1 for _, s in answers if s == 500) >= N_500:
            phase["name"] = "429"
        if phase["name"] == "429" and sum(1 for _, s in answers if s == 429) >= N_429:
            phase["name"] = "ok"
        status, headers = {"500": (500, {}), "429": (429, {"Retry-After": str(RETRY_AFTER)})}.get(
            phase["name"], (200, {}))
        answers.append((loop.time(), status))
        return status, headers

    sink.script["out"] = script
    # backoff capped at 0.5 s, so a gap of RETRY_AFTER between attempts can only be the header's
    gw = GatewayProcess(two_way_config(dev_broker, sink, port=free_port(), state_dir=tmp_path / "state"), tmp_path)
    mesh = MeshPoster(alice, n_mesh, pause_s=0.01)
    hooks = WebhookPoster(lambda: gw.base, n_hooks, senders=2, pause_s=0.02)
    ledger = Ledger("sink 500s, then 429 + Retry-After, then recovery",
                    two_way_lanes(lambda: dev_broker, sink, mesh, hooks), gw.db)
    await gw.start()
    tasks = [asyncio.create_task(mesh.run()), asyncio.create_task(hooks.run())]
    try:
        async with running(*tasks):
            async with asyncio.timeout(120):
                while min(len(a) for a in ledger.arrivals().values()) < 10:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            ledger.snapshot("sinks start failing")
            phase["name"] = "500"
            dev_broker.set_rate_limit(1, 6.0)  # one send per 10 s per member: the broker refuses the rest
            async with asyncio.timeout(120):
                while phase["name"] != "ok":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            dev_broker.set_rate_limit(LIFTED["rate_burst"], LIFTED["rate_per_minute"])
            await sources_done(within(180), mesh, hooks, tasks=tasks)
            await ledger.wait_complete(within(180))
        health = await gw.status("health")
    finally:
        await gw.stop()
    statuses = [s for _, s in answers]
    gaps_429 = [round(b[0] - a[0], 2) for a, b in itertools.pairwise(answers) if a[1] == 429]
    figs = ledger.report([(f"webhook sink answers: {statuses.count(500)} x 500, {statuses.count(429)} x 429, "
                          f"{statuses.count(200)} x 200; gaps after each 429: {gaps_429} s")])
    ledger.check(figs)
    assert all(f["duplicated"] == 0 for f in figs.values()), figs
    assert statuses.count(500) == N_500 and statuses.count(429) == N_429
    assert all(g >= RETRY_AFTER - 0.1 for g in gaps_429), gaps_429  # Retry-After honoured, not the backoff
    assert figs[M2W_LANE]["delivered"] == n_mesh
    assert health[0] == 200 and health[1] is not None
    assert await _dead_letters(gw) == 0
    assert sink.bad_signatures == 0


async def _dead_letters(gw: GatewayProcess) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{gw.db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    finally:
        conn.close()
