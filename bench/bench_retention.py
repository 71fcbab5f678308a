#!/usr/bin/env python3
"""Benchmark: the store stays bounded under retention pruning. Run by hand; not part of the suite.

    .venv/bin/python bench/bench_retention.py                      # both phases, defaults
    .venv/bin/python bench/bench_retention.py --phase carry --messages 1000000 --days 60
    .venv/bin/python bench/bench_retention.py --phase latency --backlog 300000 --rate 1000

Phases (each in its own subprocess):
  carry    pushes --messages messages through the store, spread over --days of *virtual* time
           (the store's clock is injected), each one written as the real path writes it:
           accept (inbox ledger + outbox row), map_put of the origin (the pipeline), then the
           delivery: map_put of the copy + complete (the outbox row goes); one in --dlq-every
           is dead-lettered instead, one in 10,000 writes an audit row. Pruning passes run
           concurrently (every --pass-every virtual hours) with the default [retention].
           Prints the file + WAL size per virtual day, the rows kept per table and the size at
           the end, how long the passes took, and the file after 31 more days without traffic
           (what incremental_vacuum gives back; compare --no-vacuum).
  latency  the writer's latency impact: a store holding --backlog messages' worth of rows
           past every window (a long pause, or retention just shortened), then --rate msg/s
           offered for --seconds (accept + map_put + complete, concurrently), once with pruning
           off and once with a pass clearing the backlog meanwhile. Prints accept() latency
           p50/p99/max for both, and the rows pruned per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.retention import DAY, RetentionConfig
from claudemesh_gateway.store.sqlite import SqliteStore

TEXT = "The deploy of build 4711 finished; 3 warnings, see the ops dashboard for details. "
def lane_of(worker: int) -> str:
    return f"telegram/-100{1_000_000_000 + worker}"  # one lane per worker: its head is its own message


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def item(mid: str, lane: str) -> OutboxItem:
    gw, _, chat = lane.partition("/")
    return OutboxItem(lane=lane, route="ops", destination={"gateway": gw, "chat": chat, "thread": None},
                      message={"id": mid, "origin": {"gateway": "mesh", "chat": "prod:ops", "thread": None},
                               "sender": "alice", "text": TEXT, "native_id": mid[-32:]},
                      options={"binding": {}, "attribution": "{sender}: "})


def sizes(path: Path) -> tuple[int, int]:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size, (wal.stat().st_size if wal.exists() else 0)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


async def one_message(store: SqliteStore, i: int, dlq_every: int, worker: int) -> float:
    mid = f"mesh:prod:{i:032x}"
    lane = lane_of(worker)
    t0 = time.perf_counter()
    await store.accept(mid, [item(mid, lane)])
    latency = time.perf_counter() - t0
    await store.map_put(mid, "mesh/prod:ops", [f"{i:032x}"])  # the origin (the pipeline writes it)
    head = await store.head(lane)
    if head is None:
        return latency
    if dlq_every and i % dlq_every == 0:
        await store.dead_letter(head.id, "permanent: chat not found")
        return latency
    await store.map_put(mid, lane, [str(1_000_000 + i)])  # the delivered copy
    await store.complete(head.id)
    if i % 10_000 == 0:
        await store.audit("admin", "route.test", {"route": "ops"})
    return latency


async def carry(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.dir) / "carry.sqlite3"
    start = 1_700_000_000.0
    clock = Clock(start)
    cfg = RetentionConfig(interval_s=0, vacuum=not args.no_vacuum)
    store = SqliteStore(path, clock=clock, retention=cfg, synchronous=args.synchronous)
    await store.open()
    n, span = args.messages, args.days * DAY
    step = span / n
    counter = iter(range(n))
    done = 0
    per_day: list[tuple[int, int, int]] = []
    pass_times: list[float] = []
    next_pass = start + args.pass_every * 3600
    next_day = start + DAY
    stop = False

    async def producer(worker: int) -> None:
        nonlocal done
        for i in counter:
            clock.t = max(clock.t, start + i * step)
            await one_message(store, i, args.dlq_every, worker)
            done += 1

    async def pruner() -> None:
        nonlocal next_pass
        while not stop:
            if clock.t >= next_pass:
                t0 = time.perf_counter()
                await store.purge()
                pass_times.append(time.perf_counter() - t0)
                next_pass += args.pass_every * 3600
            await asyncio.sleep(0.05)

    async def sampler() -> None:
        nonlocal next_day
        while not stop:
            if clock.t >= next_day:
                f, w = sizes(path)
                per_day.append((round((next_day - start) / DAY), f, w))
                next_day += DAY
            await asyncio.sleep(0.05)

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(pruner()), asyncio.create_task(sampler())]
    await asyncio.gather(*(producer(w) for w in range(args.concurrency)))
    elapsed = time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks)
    clock.t = start + span
    await store.purge()  # the pass at the end of the period
    stats = await store.file_stats()
    counts = {}
    for table in ("inbox", "message_map", "outbox", "dead_letters", "audit", "kv"):
        row = await store._read(lambda c, t=table: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone())
        counts[table] = row[0]
    f, w = sizes(path)
    clock.t += 31 * DAY  # then a month without traffic: what a pass gives back
    await store.purge()
    quiet_file = sizes(path)[0]
    await store.close()
    return {"quiet_file": quiet_file, "messages": done, "days": args.days, "elapsed_s": round(elapsed, 1),
            "msg_per_s": round(done / elapsed), "per_day": per_day, "final_file": f, "final_wal": w,
            "peak_file": max([p[1] for p in per_day] + [f]), "peak_wal": max([p[2] for p in per_day] + [w]),
            "rows": counts, "free_pages_end": stats["free_pages"], "passes": len(pass_times),
            "pass_s_p50": round(statistics.median(pass_times), 3) if pass_times else None,
            "pass_s_max": round(max(pass_times), 3) if pass_times else None, "vacuum": cfg.vacuum}


async def latency_run(args: argparse.Namespace, pruning: bool) -> dict[str, Any]:
    path = Path(args.dir) / f"latency-{pruning}.sqlite3"
    now = 1_700_000_000.0
    clock = Clock(now - 40 * DAY)  # the backlog: 40 days old, past every default window but audit's
    store = SqliteStore(path, clock=clock, retention=RetentionConfig(interval_s=0), synchronous=args.synchronous)
    await store.open()
    todo = iter(range(args.backlog))

    async def fill(worker: int) -> None:
        for i in todo:
            await one_message(store, i, 0, worker)

    await asyncio.gather(*(fill(w) for w in range(500)))
    await store.checkpoint()
    clock.t = now
    lat: list[float] = []
    result: dict[str, Any] = {}

    async def prune_task() -> None:
        t0 = time.perf_counter()
        result["pruned_rows"] = sum((await store.purge()).values())
        result["prune_s"] = round(time.perf_counter() - t0, 1)
        result["rows_per_s"] = round(result["pruned_rows"] / (time.perf_counter() - t0))

    async def measured(k: int) -> None:
        lat.append(await one_message(store, args.backlog + k, 0, 1000 + k))  # a fresh lane each

    task = asyncio.create_task(prune_task()) if pruning else None
    interval = 1.0 / args.rate
    pending = []
    t_start = time.perf_counter()
    for i in range(int(args.rate * args.seconds)):
        delay = t_start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(measured(i)))
    await asyncio.gather(*pending)
    if task is not None:
        await task
    await store.close()
    lat.sort()
    return {"p50_ms": round(lat[len(lat) // 2] * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2), **result}


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"backlog": args.backlog, "rate": args.rate, "seconds": args.seconds}
    out["no_pruning"] = await latency_run(args, False)
    out["pruning"] = await latency_run(args, True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["carry", "latency", "all"], default="all")
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--days", type=float, default=60.0, help="virtual days the messages are spread over")
    p.add_argument("--pass-every", type=float, default=6.0, help="virtual hours between pruning passes")
    p.add_argument("--dlq-every", type=int, default=1000, help="one message in N is dead-lettered (0: none)")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--no-vacuum", action="store_true", help="[retention] vacuum = false")
    p.add_argument("--backlog", type=int, default=300_000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    p.add_argument("--dir", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = asyncio.run({"carry": carry, "latency": latency}[args.phase](args))
        print(json.dumps(result))
        return
    phases = ["carry", "latency"] if args.phase == "all" else [args.phase]
    for phase in phases:
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            argv = [a for a in sys.argv[1:] if not a.startswith("--phase") and a not in phases]
            out = subprocess.run([sys.executable, __file__, "--child", "--phase", phase, "--dir", d, *argv],
                                 check=True, capture_output=True, text=True, env=os.environ)
            r = json.loads(out.stdout.strip().splitlines()[-1])
        report(phase, r)


def report(phase: str, r: dict[str, Any]) -> None:
    if phase == "carry":
        print(f"carry: {r['messages']:,} messages over {r['days']:g} virtual days in {r['elapsed_s']} s "
              f"({r['msg_per_s']:,} msg/s, each = accept + 2 map rows + delivery), vacuum={r['vacuum']}")
        for day, f, w in r["per_day"]:
            if day % 5 == 0 or day == 1:
                print(f"  day {day:3d}: file {mb(f):>9}  wal {mb(w):>8}")
        print(f"  end: file {mb(r['final_file'])}, wal {mb(r['final_wal'])}; peak file {mb(r['peak_file'])}, "
              f"peak wal {mb(r['peak_wal'])}; free pages left {r['free_pages_end']}")
        print(f"  rows kept: {r['rows']}")
        print(f"  after 31 more days without traffic: file {mb(r['quiet_file'])}")
        print(f"  {r['passes']} pruning passes, p50 {r['pass_s_p50']} s, max {r['pass_s_max']} s")
    else:
        print(f"latency: {r['rate']:g} msg/s offered for {r['seconds']:g} s over a {r['backlog']:,}-message backlog")
        for key in ("no_pruning", "pruning"):
            v = r[key]
            extra = (f"; pruned {v['pruned_rows']:,} rows in {v['prune_s']} s ({v['rows_per_s']:,} rows/s)"
                     if key == "pruning" else "")
            print(f"  {key:10}: accept() p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms, max {v['max_ms']} ms{extra}")


if __name__ == "__main__":
    main()
