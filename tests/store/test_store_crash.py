"""Kill -9 a process that is accepting messages: every acknowledged message must be in the store."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from claudemesh_gateway.store.sqlite import SqliteStore

CHILD = r"""
import asyncio, sys
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.sqlite import SqliteStore

async def main(path):
    store = SqliteStore(path, purge_interval=0)
    await store.open()
    counter = iter(range(10**9))

    async def source(k):
        for i in counter:
            mid = f"m{i}"
            item = OutboxItem(lane=f"tg/{i % 7}", route="r", destination={"gateway": "tg", "chat": str(i % 7)},
                              message={"id": mid, "text": "x" * 200})
            assert await store.accept(mid, [item])
            sys.stdout.write(mid + "\n")  # the "ack to the source": only after accept returned
            sys.stdout.flush()

    await asyncio.gather(*(source(k) for k in range(50)))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_store_kill9_loses_no_acknowledged_message(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), stdout=asyncio.subprocess.PIPE,
    )
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while len(acked) < 3000:
                line = await proc.stdout.readline()
                if not line:
                    break
                acked.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: batches are being written right now
    finally:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        await proc.wait()
    assert len(acked) >= 3000, "the child did not get going"

    store = SqliteStore(path, purge_interval=0)
    await store.open()
    try:
        for mid in acked:
            assert await store.seen(mid), mid
        depths = await store.outbox_depths()
        total = sum(n for n, _ in depths.values())
        assert total >= len(acked)  # every acknowledged message has its outbox row (atomic accept)
        # per lane, ids come out in order and the store still takes writes
        lane = await store.peek("tg/3", 1000)
        assert [i.id for i in lane] == sorted(i.id for i in lane)
        assert await store.accept("after-crash", [])
    finally:
        await store.close()
