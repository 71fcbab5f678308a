"""#8 hot reload on SIGHUP with an INVALID config, on a real ``claudemesh-gateway run`` process
(core/test_core_run_e2e.py sends SIGHUP only with the unchanged file): the new config is refused,
the reason is logged, the running config keeps working (a message still reaches the dev sink), and
a later valid SIGHUP is applied."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from claudemesh_gateway.plugins.webhook.signature import signature_headers

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "claudemesh-gateway"
DEV_SECRET = "dev-only-webhook-secret-not-for-production"

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not EXE.exists(), reason="console script not installed next to the interpreter")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sighup_with_an_invalid_config_keeps_the_running_one(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    shutil.copy(ROOT / "config.example.toml", cfg)
    port, broker_port = free_port(), free_port()
    env = {**os.environ, "CLAUDEMESH_SERVER__PORT": str(port), "CLAUDEMESH_DEV_BROKER__PORT": str(broker_port),
           "CLAUDEMESH_GATEWAYS__WEBHOOK__URL": f"http://127.0.0.1:{port}/-/dev/sink"}
    env.pop("CLAUDEMESH_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(str(EXE), "-c", str(cfg), "run", cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    n = 0
    seen: list = []
    alice = None

    async def deliver_one(http: aiohttp.ClientSession) -> None:
        """A signed webhook into the example route; a mesh member must read it in #general."""
        nonlocal n
        n += 1
        text = f"still alive {n}"
        body = json.dumps({"id": f"h{n}", "sender": "ops", "text": text}).encode()
        # the example route binds webhook chat "sink" both ways: an inbound post goes to the mesh topic
        headers = {**signature_headers(DEV_SECRET, body), "Content-Type": "application/json"}
        async with http.post(f"{base}/gateways/webhook/sink", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["status"] == "queued"
        async with asyncio.timeout(20):
            while not any(text in i.text for i in seen):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if proc.returncode is not None:
                    raise AssertionError(f"gateway exited early with {proc.returncode}")
                try:
                    async with http.get(f"{base}/-/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the gateway never became ready")
            from claudemesh_gateway.mesh.peer import MeshPeer
            from claudemesh_gateway.mesh.state import MemoryKV
            from claudemesh_gateway.settings import load_settings

            mesh_cfg = load_settings(cfg).mesh["dev_alice"].model_copy(
                update={"topic_poll_interval": 0.1, "topic_poll_idle_interval": 0.3})
            alice = MeshPeer("dev_alice", mesh_cfg, kv=MemoryKV(), on_message=seen.append, identity="cli")
            await alice.start()
            await alice.wait_connected(10)
            await alice.watch_topic("general")

            cfg.write_text(cfg.read_text() + "\n[gateways.extra]\ntype = \"webhook\"\nsecrte = \"typo\"\n")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            assert proc.returncode is None, "an invalid config on SIGHUP must not stop the gateway"
            async with http.get(f"{base}/-/ready") as resp:
                assert resp.status == 200, await resp.text()
            await deliver_one(http)  # the running config still accepts and routes traffic

            # a valid reload afterwards is applied
            cfg.write_text((ROOT / "config.example.toml").read_text())
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            assert proc.returncode is None
            await deliver_one(http)
    finally:
        if alice is not None:
            await alice.stop()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            raise
    text = err.decode()
    assert proc.returncode == 0, text[-2000:]
    assert "reload refused" in text and "gateways.extra" in text, text[-3000:]
    assert "config reloaded by sighup" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
