"""Issue 16, faults through the whole app: clock jumps while both directions are busy. The dev
broker's clock (``DevBrokerConfig.clock_offset_ms``, as in
tests/acceptance/test_defect17_clock_steps_whole_app.py) steps 50 s forward and back while it runs,
the broker is restarted with a fast clock and then with the right one, and the gateway is
SIGKILLed while the topic rows carry future timestamps; lost 0, duplicates only the items in flight
at the kill. (Steps of the *gateway's* wall clock, which time its retries, are covered by
tests/delivery/test_defect17_15_clock_step_retries.py on a virtual clock.)"""

from __future__ import annotations

import asyncio

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

FAST_MS = 50_000


async def test_faults16_broker_clock_jumps_forward_and_back_with_a_kill_nothing_lost(tmp_path, dev_broker, sink,
                                                                                    alice):
    n_mesh, n_hooks = scaled(200), scaled(200)
    brokers = {"now": dev_broker}
    gw = GatewayProcess(two_way_config(dev_broker, sink, port=free_port(), state_dir=tmp_path / "state"), tmp_path)
    mesh = MeshPoster(alice, n_mesh, pause_s=0.01)
    hooks = WebhookPoster(lambda: gw.base, n_hooks, senders=1, pause_s=0.05)
    ledger = Ledger("broker clock jumps", two_way_lanes(lambda: brokers["now"], sink, mesh, hooks), gw.db)
    steps: list[str] = []

    async def flowing() -> None:
        await ledger.flowing(10, within=60)

    async def restart(offset_ms: int) -> None:
        mesh.gate.clear()
        brokers["now"] = await restart_broker(brokers["now"], down_s=0.5, clock_offset_ms=offset_ms)
        ledger.snapshot(f"broker restart, clock {offset_ms:+d} ms")
        mesh.gate.set()

    await gw.start()
    tasks = [asyncio.create_task(mesh.run()), asyncio.create_task(hooks.run())]
    try:
        async with running(*tasks):
            await flowing()
            brokers["now"].config.clock_offset_ms = FAST_MS
            steps.append("+50 s")
            await flowing()
            await gw.kill()  # the newest topic rows are 50 s in the future when the gateway dies
            await asyncio.sleep(0.3)
            ledger.snapshot("gateway SIGKILL, broker clock +50 s")
            await gw.start()
            await flowing()
            brokers["now"].config.clock_offset_ms = 0  # put right: new rows sort under the fast ones
            steps.append("back to 0")
            await flowing()
            await restart(FAST_MS)
            steps.append("restart at +50 s")
            await flowing()
            await restart(0)
            steps.append("restart at 0")
            await sources_done(within(180), mesh, hooks, tasks=tasks)
            await ledger.wait_complete(within(180), then=2.0)  # a few more polls: nothing old comes back
    finally:
        await gw.stop()
        if brokers["now"] is not dev_broker:
            await brokers["now"].stop()
    figs = ledger.report([f"{n_mesh} mesh posts, {n_hooks} webhooks; broker clock: {', '.join(steps)}"])
    assert mesh.acked == set(mesh.keys) and hooks.acked == set(hooks.keys)
    ledger.check(figs)
    log = gw.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert sink.bad_signatures == 0
