"""Issue 16, faults through the whole app: the store's disk fills up (a size-limited tmpfs under
the state directory, filled by another file) while both directions are busy. The gateway must
stop acknowledging its sources (webhooks answered 503 + Retry-After; the topic cursor is not
advanced past what it could not store) rather than lose anything, report not-ready naming the
cause, log it without a traceback per request, and carry on by itself when the space returns.
Skipped, with the reason, where a tmpfs cannot be mounted (not root, not Linux)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from .harness import (
    GatewayProcess,
    Ledger,
    MeshPoster,
    WebhookPoster,
    fill_disk,
    free_port,
    mount_tmpfs,
    running,
    scaled,
    sources_done,
    two_way_config,
    two_way_lanes,
    unmount,
    within,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(within(300))]

DISK_BYTES = 24 * 1024 * 1024


async def test_faults16_store_disk_full_refuses_sources_not_ready_recovers_nothing_lost(tmp_path, dev_broker, sink,
                                                                                       alice):
    disk = tmp_path / "disk"
    why = mount_tmpfs(disk, DISK_BYTES)
    if why is not None:
        pytest.skip(f"no size-limited filesystem for the store: {why}")
    filler = disk / "filler"
    n_mesh, n_hooks = scaled(200), scaled(300)
    gw = GatewayProcess(two_way_config(dev_broker, sink, port=free_port(), state_dir=disk / "state"), tmp_path)
    mesh = MeshPoster(alice, n_mesh, pause_s=0.02)
    hooks = WebhookPoster(lambda: gw.base, n_hooks, senders=2, pause_s=0.03)
    ledger = Ledger("store disk full", two_way_lanes(lambda: dev_broker, sink, mesh, hooks), gw.db)
    try:
        await gw.start()
        tasks = [asyncio.create_task(mesh.run()), asyncio.create_task(hooks.run())]
        async with running(*tasks):
            async with asyncio.timeout(120):
                while min(len(a) for a in ledger.arrivals().values()) < 20:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            filled = fill_disk(filler)
            ledger.snapshot("disk full")
            refused_before = hooks.refused[503]
            not_ready = await gw.wait_status("ready", 503, within=120)
            acked_at_not_ready = len(hooks.acked)
            await asyncio.sleep(2.0)  # a while of full disk with both sources pushing
            still = await gw.status("ready")
            refused_while_full = hooks.refused[503] - refused_before
            acked_while_full = len(hooks.acked) - acked_at_not_ready
            filler.unlink()  # space returns; nothing else is done
            ready = await gw.wait_status("ready", 200, within=60)
            await sources_done(within(180), mesh, hooks, tasks=tasks)
            await ledger.wait_complete(within(180))
    finally:
        await gw.stop()
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        unmount(disk)
    log = gw.log_path.read_text(errors="replace")
    errors = [ln for ln in log.splitlines() if " ERROR " in ln or "CRITICAL" in ln]
    figs = ledger.report([
        (f"filled {filled} bytes; webhooks refused 503 while full: {refused_while_full}, acknowledged while "
         f"not ready: {acked_while_full}; ERROR lines in the log: {len(errors)}, "
         f"tracebacks: {log.count('Traceback')}"),
        f"not ready said: {not_ready.get('problems') if isinstance(not_ready, dict) else not_ready}",
    ])
    assert not_ready is not None and not not_ready["ready"]
    assert any("store cannot write" in p for p in not_ready["problems"]), not_ready
    assert still[0] == 503, still  # it stays not-ready while full; it does not flap
    assert refused_while_full > 0 and acked_while_full == 0
    assert ready is not None and ready["ready"]
    assert log.count("Traceback") == 0, log[-3000:]
    assert len(errors) <= 3, errors
    assert any("writes again" in ln for ln in log.splitlines()), log[-2000:]
    ledger.check(figs)
    assert mesh.acked == set(mesh.keys) and hooks.acked == set(hooks.keys)
    assert sink.bad_signatures == 0
