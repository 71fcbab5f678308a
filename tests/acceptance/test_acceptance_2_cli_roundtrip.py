"""#2 "the example config runs against the dev broker and `mesh send`/`mesh tail` show a message going
round", as an operator types it: every command is a real ``.venv/bin/claudemesh-gateway`` process.

config.example.toml, unedited, in a fresh directory: ``run`` (embedded dev broker + webhook to the
dev sink); ``mesh tail dev_bob --topic general`` in another process; ``mesh send dev_alice --topic
general`` in a third. The message goes alice -> broker -> tail (bob) and alice -> broker -> gateway
-> dev sink; a signed webhook into the gateway goes gateway -> broker -> tail.

(tests/core/test_core_cli.py::test_mesh_commands_against_the_dev_broker calls cli.main in-process
with a hand-written config; tests/core/test_core_run_e2e.py runs the example but uses no mesh CLI.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
EXE = Path(sys.executable).parent / "claudemesh-gateway"
DEV_SECRET = "dev-only-webhook-secret-not-for-production"  # config.example.toml's [gateways.webhook] secret

pytestmark = [pytest.mark.timeout(110),
              pytest.mark.skipif(not EXE.exists(), reason="console script not installed next to the interpreter")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def cli(cwd: Path, env: dict[str, str], *args: str, limit_s: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(str(EXE), "-c", "config.toml", *args, cwd=cwd, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{args} did not finish within {limit_s}s") from None
    return proc.returncode or 0, out.decode(), err.decode()


async def tail_until(cwd: Path, env: dict[str, str], post: Any, marker: str) -> list[dict[str, Any]]:
    """Start ``mesh tail`` (shows new messages only) and call ``post()`` until the tail has printed one."""
    tail = asyncio.create_task(cli(cwd, env, "mesh", "tail", "dev_bob", "--topic", "general", "--count", "1",
                                   "--timeout", "40", limit_s=60))
    for _ in range(20):
        await asyncio.sleep(1.0)
        if tail.done():
            break
        await post()
    code, out, err = await tail
    assert code == 0, err[-2000:]
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert rows and all(set(r) >= {"id", "sender", "text", "createdAt"} for r in rows), out
    assert any(marker in r["text"] for r in rows), rows
    return rows


async def test_example_config_mesh_send_and_tail_show_a_message_going_round(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "config.toml")
    port, broker_port = free_port(), free_port()
    env = {**os.environ, "CLAUDEMESH_SERVER__PORT": str(port), "CLAUDEMESH_DEV_BROKER__PORT": str(broker_port),
           "CLAUDEMESH_GATEWAYS__WEBHOOK__URL": f"http://127.0.0.1:{port}/-/dev/sink",
           "CLAUDEMESH_MESH__DEV__TOPIC_POLL_INTERVAL": "0.1", "CLAUDEMESH_MESH__DEV__TOPIC_POLL_IDLE_INTERVAL": "0.3"}
    env.pop("CLAUDEMESH_CONFIG", None)
    gw = await asyncio.create_subprocess_exec(str(EXE), "-c", "config.toml", "run", cwd=tmp_path, env=env,
                                              stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # up, and its mesh connected
                if gw.returncode is not None:
                    raise AssertionError(f"gateway exited early with {gw.returncode}")
                try:
                    async with http.get(f"{base}/-/health") as resp:
                        if resp.status == 200 and (await resp.json())["meshes"].get("dev", {}).get("state") == "connected":
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the gateway never connected to the embedded dev broker")

            # 1. mesh send (alice) -> tail (bob) and -> the gateway -> the dev sink
            sent: list[str] = []

            async def send() -> None:
                text = f"round trip {len(sent)}"
                code, _out, err = await cli(tmp_path, env, "mesh", "send", "dev_alice", "--topic", "general", text)
                assert code == 0, err[-2000:]
                sent.append(text)

            rows = await tail_until(tmp_path, env, send, "round trip")
            assert rows[0]["sender"] == "alice"
            received: list[Any] = []
            for _ in range(150):
                async with http.get(f"{base}/-/dev/sink") as resp:
                    received = await resp.json()
                if any(r["body"]["text"] == f"alice: {sent[0]}" for r in received):
                    break
                await asyncio.sleep(0.1)
            assert any(r["body"]["text"] == f"alice: {sent[0]}" and r["signed"] for r in received), received

            # 2. a signed webhook into the gateway -> the mesh topic -> tail (bob)
            from claudemesh_gateway.plugins.webhook.signature import signature_headers

            n = 0

            async def post_webhook() -> None:
                nonlocal n
                n += 1
                body = json.dumps({"id": f"w{n}", "sender": "ci", "text": f"from the webhook {n}"}).encode()
                headers = {**signature_headers(DEV_SECRET, body), "Content-Type": "application/json"}
                async with http.post(f"{base}/gateways/webhook/sink", data=body, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()

            rows = await tail_until(tmp_path, env, post_webhook, "from the webhook")
            assert any("ci" in r["text"] and "from the webhook" in r["text"] for r in rows), rows
    finally:
        if gw.returncode is None:
            gw.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(gw.communicate(), 20)
        except TimeoutError:
            gw.kill()
            raise
    text = err.decode()
    assert gw.returncode == 0, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    assert DEV_SECRET not in text
