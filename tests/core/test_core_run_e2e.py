"""``claudemesh-gateway run`` on config.example.toml, as an operator runs it (a real process)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_http(url: str, proc: asyncio.subprocess.Process, timeout: float = 20.0) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout / 0.1)):
            if proc.returncode is not None:
                raise AssertionError(f"gateway exited early with {proc.returncode}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return await resp.json()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


async def test_run_example_config_end_to_end(tmp_path: Path) -> None:
    from claudemesh_gateway.mesh.peer import MeshPeer
    from claudemesh_gateway.mesh.state import MemoryKV
    from claudemesh_gateway.settings import load_settings

    shutil.copy(EXAMPLE, tmp_path / "config.toml")
    port, broker_port = free_port(), free_port()
    env = {**os.environ, "CLAUDEMESH_SERVER__PORT": str(port), "CLAUDEMESH_DEV_BROKER__PORT": str(broker_port),
           "CLAUDEMESH_GATEWAYS__WEBHOOK__URL": f"http://127.0.0.1:{port}/-/dev/sink",
           "CLAUDEMESH_MESH__DEV__TOPIC_POLL_INTERVAL": "0.1", "CLAUDEMESH_MESH__DEV__TOPIC_POLL_IDLE_INTERVAL": "0.3"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "claudemesh_gateway", "-c", str(tmp_path / "config.toml"), "run",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    alice = None
    try:
        await wait_http(f"http://127.0.0.1:{port}/-/health", proc)
        settings = load_settings(tmp_path / "config.toml")  # meshes.toml now exists
        assert settings.mesh["dev"].broker_url == f"ws://127.0.0.1:{broker_port}/ws"
        alice = MeshPeer("dev_alice", settings.mesh["dev_alice"], kv=MemoryKV(), identity="cli")
        await alice.start()
        await alice.wait_connected(10)
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the gateway joins #general shortly after it connects
                async with http.get(f"http://127.0.0.1:{port}/-/health") as resp:
                    if "connected" in str(await resp.json()):
                        break
                await asyncio.sleep(0.1)
            await alice.post_topic("general", "hello from alice")
            received: list[Any] = []
            for _ in range(150):
                async with http.get(f"http://127.0.0.1:{port}/-/dev/sink") as resp:
                    received = await resp.json()
                if received:
                    break
                await asyncio.sleep(0.1)
        assert received, "the webhook never reached the dev sink"
        assert received[0]["signed"] is True
        assert received[0]["body"]["text"] == "alice: hello from alice"
        proc.send_signal(signal.SIGHUP)  # hot reload of the unchanged file: validated, nothing restarted
        await asyncio.sleep(0.5)
        assert proc.returncode is None
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
    assert "dev-only-webhook-secret" not in text  # secrets never reach the logs
    assert "Traceback" not in text, text[-2000:]
    assert "config reloaded by sighup" in text
