"""Faults with several replicas on PostgreSQL: the database restarts mid-flow (replicas report
not-ready, reconnect, and lose nothing they acknowledged). The SIGKILL of a lease owner is in
test_e2e_replicas_kill.py (separate processes)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from .conftest import SECRET, signed_post, wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pg-test-server.sh"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def private_pg(pg_dsn: str):  # pg_dsn: skipped with the rest of the PostgreSQL half
    """A PostgreSQL server of this test's own (it is stopped and started again mid-test)."""
    started = _script("start")
    if started.returncode == 3:
        pytest.skip("PostgreSQL tests skipped: no server binaries for a private server")
    assert started.returncode == 0, started.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
    try:
        yield env["CLAUDEMESH_TEST_PG_DSN"], env["PG_TEST_DIR"]
    finally:
        _script("stop", env["PG_TEST_DIR"])


@pytest.mark.slow
async def test_postgres_restart_mid_flow_loses_nothing_acknowledged(e2e_app, sink, private_pg, caplog) -> None:
    dsn, pg_dir = private_pg
    route = [{"name": "intake", "binds": [
        {"gateway": "wh", "chat": "ci", "direction": "in"},
        {"gateway": "wh", "chat": "log", "direction": "out", "options": {"url": sink.url("log")}}]}]
    store = {"backend": "postgres", "dsn": dsn, "lease_ttl": 2.0, "connect_timeout": 2.0}
    reps = [await e2e_app(route, store={**store, "replica_id": f"r{i}"}, delivery={"poll_interval": 0.5})
            for i in range(2)]
    acked: list[str] = []
    refused = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            client = reps[i % 2][0]
            text = f"m{i:05d}"
            body, headers = signed_post({"id": text, "sender": "ci", "text": text}, SECRET)
            try:
                resp = await client.post("/gateways/wh/ci", data=body, headers=headers)
                if resp.status == 200:
                    acked.append(text)
                else:
                    refused += 1
            except Exception:  # noqa: BLE001 - a refused request is not acknowledged
                refused += 1
            i += 1
            await asyncio.sleep(0.01)

    flow = asyncio.create_task(traffic())
    await wait_until(lambda: len(acked) >= 40, 30, "traffic before the restart")
    assert (await asyncio.to_thread(_script, "pause", pg_dir)).returncode == 0  # PostgreSQL goes down

    async def not_ready() -> bool:
        for client, _rt in reps:
            resp = await client.get("/-/ready")
            body = await resp.json()
            # "store cannot write: PostgreSQL ... unavailable" once the store noticed (write_problem),
            # "store unreachable" when only the readiness ping did; one line either way
            store_lines = [p for p in body["problems"] if p.startswith(("store cannot write", "store unreachable"))]
            if resp.status != 503 or len(store_lines) != 1:
                return False
        return True

    for _ in range(100):
        if await not_ready():
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the replicas did not report not-ready while PostgreSQL was down")
    during = len(acked)
    await asyncio.sleep(1.0)
    assert len(acked) - during <= 2  # nothing is acknowledged while the database is down (bar in-flight)
    assert (await asyncio.to_thread(_script, "resume", pg_dir)).returncode == 0
    await wait_until(lambda: len(acked) >= during + 40, 60, "traffic after the restart")
    stop.set()
    await flow
    await wait_until(lambda: set(acked) <= {b["text"].removeprefix("ci: ") for b in sink.received["log"]}, 60,
                     "every acknowledged message at the sink")
    for client, _rt in reps:
        for _ in range(100):
            if (await client.get("/-/ready")).status == 200:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("a replica did not become ready again")
    assert refused > 0  # the restart was felt
    # the store logs the outage itself (a line per replica, rate-limited): no traceback per refused request
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
    assert any("writes again" in r.getMessage() for r in caplog.records)
    delivered = [b["text"].removeprefix("ci: ") for b in sink.received["log"]]
    order = [t for t in dict.fromkeys(delivered) if t in set(acked)]
    assert order == sorted(order)  # one chat: delivered in the order accepted

