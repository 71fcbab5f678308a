"""#3 crash test with the MESH as the source (tests/e2e/test_e2e_crash.py feeds signed webhooks): a real
``claudemesh-gateway run`` process ingests topic posts from the dev broker (running in the test process,
so its state survives the kills) and delivers them to a webhook sink; it is SIGKILLed twice at random
moments while posts are being made and ingested, and restarted. Every post must reach the sink;
duplicates are bounded by what can be in flight at a kill (sources are acknowledged — here the topic
cursor is advanced — only after the outbox commit)."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import FAST_POLL, WH_SECRET, to_toml

EXE = Path(sys.executable).parent / "claudemesh-gateway"
N_POSTS = 300
KILLS = 2
PREFETCH = 8

pytestmark = [pytest.mark.timeout(110),
              pytest.mark.skipif(not EXE.exists(), reason="console script not installed next to the interpreter")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigkill_while_ingesting_mesh_posts_loses_nothing(tmp_path: Path, dev_broker, sink):
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    dev_broker.set_rate_limit(1000, 600_000)
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(to_toml({
        "include": [str(Path(dev_broker.state_dir) / "meshes.toml")],
        "server": {"host": "127.0.0.1", "port": port, "state_dir": str(tmp_path / "var"), "shutdown_timeout": 5.0},
        "log": {"level": "WARNING"},
        "mesh": {"dev": {**FAST_POLL, "topic_poll_interval": 0.1, "topic_poll_idle_interval": 0.2}},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.2, "poll_interval": 0.5, "prefetch": PREFETCH},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general", "direction": "out",
                    "binds": [{"gateway": "wh", "chat": "out", "options": {"url": sink.url("out")}}]}],
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDEMESH_")}
    starts = 0

    async def start() -> asyncio.subprocess.Process:
        nonlocal starts
        starts += 1
        proc = await asyncio.create_subprocess_exec(str(EXE), "-c", str(cfg), "run", cwd=tmp_path, env=env,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if proc.returncode is not None:
                    raise AssertionError(f"seed {seed}: gateway exited early with {proc.returncode}")
                try:
                    async with http.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                        if resp.status == 200:
                            return proc
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"seed {seed}: the gateway never became ready")

    from claudemesh_gateway.mesh import MeshPeer
    from claudemesh_gateway.mesh.config import MeshConfig
    from claudemesh_gateway.mesh.state import MemoryKV
    from claudemesh_gateway.testing import dev_mesh_tables

    tables = dev_mesh_tables(dev_broker.state_dir)
    alice = MeshPeer("dev_alice", MeshConfig.model_validate({**tables["dev_alice"], **FAST_POLL, "rate_burst": 1000,
                                                             "rate_per_minute": 600_000}),
                     kv=MemoryKV(), identity="cli")
    await alice.start()
    proc = None
    texts = [f"post {i:04d}" for i in range(N_POSTS)]
    try:
        await alice.wait_connected(10)
        proc = await start()

        async def poster() -> None:
            for t in texts:
                assert await alice.post_topic("general", t)
                await asyncio.sleep(0.005)

        posting = asyncio.create_task(poster())
        for k in range(KILLS):
            await asyncio.sleep(rnd.uniform(0.3, 1.2))
            if k == 0:
                assert not posting.done(), "the first kill must land while posts are still being made"
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            proc = await start()
        await posting
        expected = {f"alice: {t}" for t in texts}
        async with asyncio.timeout(60):
            while not expected <= set(sink.texts("out")):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    finally:
        await alice.stop()
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
    counts = collections.Counter(sink.texts("out"))
    assert set(counts) == expected, f"seed {seed}: lost {sorted(expected - set(counts))[:10]}"
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= KILLS * (PREFETCH + 1), f"seed {seed}: {duplicates} duplicates"
    assert starts == KILLS + 1
    assert sink.bad_signatures == 0
