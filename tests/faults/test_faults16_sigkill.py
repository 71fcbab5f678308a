"""Issue 16, faults through the whole app: SIGKILL of ``claudemesh-gateway run`` at random (seeded)
moments while both directions are busy: mesh topic posts -> webhook sink and signed webhooks ->
mesh topic, so both kinds of sink are written to when the process dies. After each kill the
store file is read (what the restart will see) for the items *in flight*: at their sink already
but still queued. At the end: every acknowledged item arrived (lost 0) and every duplicate is one
of those in flight at the kill before it. ``CLAUDEMESH_FAULT_SCALE`` multiplies the counts."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from .harness import (
    SCALE,
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


async def test_faults16_sigkill_at_random_moments_both_directions_nothing_lost(tmp_path, dev_broker, sink, alice):
    seed = int(os.environ.get("CLAUDEMESH_FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    kills = 7 if SCALE > 1 else 5
    n_mesh, n_hooks = scaled(300), scaled(300)
    sink.delay_s = 0.005  # a delivery takes a moment, so kills land inside one
    gw = GatewayProcess(two_way_config(dev_broker, sink, port=free_port(), state_dir=tmp_path / "state",
                                       delivery={"prefetch": 64}), tmp_path)
    mesh = MeshPoster(alice, n_mesh)
    hooks = WebhookPoster(lambda: gw.base, n_hooks, senders=4)
    ledger = Ledger(f"SIGKILL x{kills} (seed {seed})", two_way_lanes(lambda: dev_broker, sink, mesh, hooks), gw.db)
    await gw.start()
    tasks = [asyncio.create_task(mesh.run()), asyncio.create_task(hooks.run())]
    try:
        async with running(*tasks):
            for k in range(kills):
                # kill while both lanes are flowing: a few new arrivals in each since the last start
                await ledger.flowing(3)
                await asyncio.sleep(rng.uniform(0.0, 0.8))
                await gw.kill()
                await asyncio.sleep(sink.delay_s + 0.3)  # answers and frames already on their way land
                ledger.snapshot(f"kill {k + 1}")
                await gw.start()
            await sources_done(within(180), mesh, hooks, tasks=tasks)
            await ledger.wait_complete(within(180))
    finally:
        await gw.stop()
    figs = ledger.report([f"{n_mesh} mesh posts, {n_hooks} webhooks, {gw.starts} starts",
                          f"source retries: webhook refusals by status {dict(hooks.refused)}"])
    assert gw.kills == kills and gw.starts == kills + 1
    assert mesh.acked == set(mesh.keys) and hooks.acked == set(hooks.keys)
    ledger.check(figs, max_in_flight=1)  # each lane sends one item at a time; completions per item
    assert sink.bad_signatures == 0
