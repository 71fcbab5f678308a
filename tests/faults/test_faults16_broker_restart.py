"""Issue 16, faults through the whole app: the broker dies (every socket dropped, no close frame)
and comes back on the same port while both directions are busy, twice. The gateway keeps taking
webhooks while the broker is away (they wait in its outbox), its topic poller and mesh lane
reconnect by themselves, and at the end every acknowledged item arrived: lost 0, duplicates
only among the mesh sends in flight when the broker died (queued by the broker, ack never seen)."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from .harness import (
    GatewayProcess,
    Ledger,
    MeshPoster,
    WebhookPoster,
    free_port,
    restart_broker,
    running,
    scaled,
    sources_done,
    two_way_config,
    two_way_lanes,
    within,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(within(300))]


async def test_faults16_broker_killed_and_restarted_mid_flow_nothing_lost(tmp_path, dev_broker, sink, alice):
    seed = int(os.environ.get("CLAUDEMESH_FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    restarts = 2
    n_mesh, n_hooks = scaled(200), scaled(300)
    brokers = {"now": dev_broker}
    gw = GatewayProcess(two_way_config(dev_broker, sink, port=free_port(), state_dir=tmp_path / "state"), tmp_path)
    mesh = MeshPoster(alice, n_mesh)
    hooks = WebhookPoster(lambda: gw.base, n_hooks, senders=2, pause_s=0.04)
    ledger = Ledger(f"broker restart x{restarts} (seed {seed})",
                    two_way_lanes(lambda: brokers["now"], sink, mesh, hooks), gw.db)
    accepted_while_down = []
    await gw.start()
    tasks = [asyncio.create_task(mesh.run()), asyncio.create_task(hooks.run())]
    try:
        async with running(*tasks):
            for k in range(restarts):
                await ledger.flowing(5)
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                mesh.gate.clear()  # the source pauses: its own lost acks would be *its* duplicates
                acked = len(hooks.acked)
                down = restart_broker(brokers["now"], down_s=rng.uniform(1.0, 2.5))
                # the snapshot is taken once the old broker is gone: its rows are final
                brokers["now"] = await down
                ledger.snapshot(f"broker restart {k + 1}")
                accepted_while_down.append(len(hooks.acked) - acked)
                mesh.gate.set()
            await sources_done(within(180), mesh, hooks, tasks=tasks)
            await ledger.wait_complete(within(180))
    finally:
        await gw.stop()
        if brokers["now"] is not dev_broker:
            await brokers["now"].stop()
    figs = ledger.report([(f"{n_mesh} mesh posts, {n_hooks} webhooks; webhooks acknowledged while the broker "
                          f"was away: {accepted_while_down}")])
    assert gw.starts == 1 and gw.running is False
    assert mesh.acked == set(mesh.keys) and hooks.acked == set(hooks.keys)
    assert sum(accepted_while_down) > 0, "no webhook arrived while the broker was away: nothing was tested"
    ledger.check(figs, max_in_flight=1)  # one send at a time per lane: at most its ack was lost
    assert sink.bad_signatures == 0
