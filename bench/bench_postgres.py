#!/usr/bin/env python3
"""Benchmark: PostgresStore + DeliveryEngine with lane leases, one replica and three. By hand; not
part of the test suite.

    .venv/bin/python bench/bench_postgres.py                       # a throwaway durable PostgreSQL
    .venv/bin/python bench/bench_postgres.py --dsn postgresql://... # your server (a fresh schema per phase)
    .venv/bin/python bench/bench_postgres.py --phase accept --replicas 3

Without --dsn a throwaway server is started with scripts/pg-test-server.sh in its durable mode
(fsync and synchronous_commit on, as in production; the test suite's server turns them off).

Phases (each replica is its own process, as replicas are):
  accept   msg/s into the outbox: N messages accepted (inbox ledger + outbox row, group commit),
           C concurrent sources per replica, split over the replicas
  deliver  msg/s through delivery: N queued over L lanes, drained by the replicas' engines to an
           in-process sink with the message-map write; each lane under its lease (one replica at a
           time), sends counted per replica (duplicates would show as sends > N)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The deploy of build 4711 finished; 3 warnings, see the ops dashboard for details. " * 2


def make_item(i: int, lanes: int) -> tuple[str, Any]:
    from claudemesh_gateway.messages import Address, Message, address_to_dict, message_to_dict
    from claudemesh_gateway.store.base import OutboxItem

    to = Address("telegram", str(-1000 - (i % lanes)))
    msg = Message(id=f"mesh:bench:{i}", origin=Address("mesh", "bench:#ops"), sender="alice", text=TEXT,
                  native_id=str(i))
    return msg.id, OutboxItem(lane=to.key, route="ops", destination=address_to_dict(to),
                              message=message_to_dict(msg), options={"attribution": True})


class SinkTransport:
    """In-process sink: renders like the core (dict -> Message, one part), records the message map."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.count = 0

    async def render(self, item: Any) -> tuple[list[Any], Sequence[Any]]:
        from claudemesh_gateway.messages import Outbound, address_from_dict, message_from_dict

        msg = message_from_dict(item.message)
        return [Outbound(message=msg, to=address_from_dict(item.destination), text=f"[{msg.sender}] {msg.text}",
                         idempotency_key=msg.id)], ()

    async def send(self, out: Any) -> Any:
        from claudemesh_gateway.messages import SendResult

        self.count += 1
        return SendResult(native_ids=(str(self.count),))

    async def delivered(self, item: Any, results: list[Any]) -> None:
        await self.store.map_put(item.message["id"], item.lane, [n for r in results for n in r.native_ids])


# -- workers (one process = one replica) --------------------------------------------------------------------------
async def _open(dsn: str) -> Any:
    from claudemesh_gateway.store.postgres import PostgresStore

    store = PostgresStore(dsn, purge_interval=0, max_pool=8)
    await store.open()
    return store


async def _wait_until(start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))


async def worker_accept(args: argparse.Namespace) -> dict[str, Any]:
    store = await _open(args.dsn)
    items = [make_item(i, args.lanes) for i in range(args.first, args.first + args.n)]
    it = iter(items)

    async def source() -> None:
        for mid, item in it:
            await store.accept(mid, [item])

    await _wait_until(args.start_at)
    t = time.perf_counter()
    await asyncio.gather(*(source() for _ in range(args.concurrency)))
    dt = time.perf_counter() - t
    stats = store.stats()
    await store.close()
    return {"n": args.n, "seconds": dt, "commits": stats["batches"]}


async def worker_deliver(args: argparse.Namespace) -> dict[str, Any]:
    from claudemesh_gateway.delivery import DeliveryConfig, DeliveryEngine
    from claudemesh_gateway.store.leases import Leases

    store = await _open(args.dsn)
    leases = Leases(store, replica=f"bench-{os.getpid()}", ttl=15.0)
    leases.start()
    tr = SinkTransport(store)
    cfg = DeliveryConfig(default_limits={}, poll_interval=0.2, concurrency=args.engine_concurrency)
    eng = DeliveryEngine(store, tr, config=cfg, lanes=leases.lanes())
    await _wait_until(args.start_at)
    t = time.perf_counter()
    await eng.start()
    while await store.outbox_count() > 0:  # noqa: ASYNC110 - everyone's lanes, not only ours
        await asyncio.sleep(0.02)
    dt = time.perf_counter() - t
    await eng.stop(5)
    await leases.close()
    await store.close()
    return {"sent": tr.count, "seconds": dt}


# -- orchestration -------------------------------------------------------------------------------------------------
def _schema_dsn(base: str) -> str:
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        c = await asyncpg.connect(base)
        try:
            await c.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await c.close()

    asyncio.run(create())
    return f"{base}{'&' if '?' in base else '?'}search_path={schema}"


def _spawn(kind: str, dsn: str, **kw: Any) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--worker", kind, "--dsn", dsn]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"a bench worker failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def run_accept(base: str, replicas: int, n: int, lanes: int, concurrency: int) -> dict[str, Any]:
    dsn = _schema_dsn(base)
    asyncio.run(_migrate(dsn))
    share = n // replicas
    start_at = time.time() + 3.0  # every process connected before the clock starts
    procs = [_spawn("accept", dsn, n=share, first=k * share, lanes=lanes, concurrency=concurrency,
                    start_at=start_at) for k in range(replicas)]
    res = _collect(procs)
    wall = max(r["seconds"] for r in res)
    return {"phase": "accept", "replicas": replicas, "messages": share * replicas,
            "msg_per_s": round(share * replicas / wall), "commits": sum(r["commits"] for r in res)}


def run_deliver(base: str, replicas: int, n: int, lanes: int, concurrency: int) -> dict[str, Any]:
    dsn = _schema_dsn(base)
    filled = _collect([_spawn("accept", dsn, n=n, first=0, lanes=lanes, concurrency=concurrency,
                              start_at=0)])[0]
    del filled
    start_at = time.time() + 3.0
    # a replica keeps the lanes it holds while they have a backlog: [delivery] concurrency (lanes
    # worked at once per replica) is what spreads N busy lanes over the replicas
    per = -(-lanes // replicas)
    procs = [_spawn("deliver", dsn, n=n, start_at=start_at, engine_concurrency=per) for _ in range(replicas)]
    res = _collect(procs)
    wall = max(r["seconds"] for r in res)
    sent = [r["sent"] for r in res]
    return {"phase": "deliver", "replicas": replicas, "messages": n, "lanes": lanes, "lanes_per_replica": per,
            "msg_per_s": round(n / wall), "sent_per_replica": sent, "duplicates": sum(sent) - n}


async def _migrate(dsn: str) -> None:
    store = await _open(dsn)
    await store.close()


def _throwaway_server() -> tuple[str, str]:
    env = {**os.environ, "PG_TEST_DURABLE": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "pg-test-server.sh"), "start"], capture_output=True,
                       text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"could not start a throwaway PostgreSQL (pass --dsn):\n{r.stderr}")
    values = dict(line.removeprefix("export ").split("=", 1) for line in r.stdout.splitlines())
    return values["CLAUDEMESH_TEST_PG_DSN"], values["PG_TEST_DIR"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=None)
    p.add_argument("--phase", choices=["accept", "deliver", "all"], default="all")
    p.add_argument("--replicas", type=int, nargs="*", default=[1, 3])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--lanes", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=300)
    # worker mode (internal)
    p.add_argument("--worker", choices=["accept", "deliver"], help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--engine-concurrency", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        fn = worker_accept if args.worker == "accept" else worker_deliver
        print(json.dumps(asyncio.run(fn(args))))
        return
    server_dir = None
    base = args.dsn or os.environ.get("CLAUDEMESH_BENCH_PG_DSN")
    if base is None:
        base, server_dir = _throwaway_server()
    try:
        phases = ["accept", "deliver"] if args.phase == "all" else [args.phase]
        for phase in phases:
            for r in args.replicas:
                fn = run_accept if phase == "accept" else run_deliver
                print(json.dumps(fn(base, r, args.n, args.lanes, args.concurrency)), flush=True)
    finally:
        if server_dir is not None:
            subprocess.run(["bash", str(ROOT / "scripts" / "pg-test-server.sh"), "stop", server_dir], check=False)


if __name__ == "__main__":
    main()
