#!/usr/bin/env python3
"""Benchmark: SqliteStore + DeliveryEngine. Run by hand; not part of the test suite.

    .venv/bin/python bench/bench_store_delivery.py                 # every phase
    .venv/bin/python bench/bench_store_delivery.py --phase accept  # one phase
    .venv/bin/python bench/bench_store_delivery.py --synchronous NORMAL

Phases (each runs in its own subprocess, so peak RSS is per phase):
  accept   msg/s into the outbox: N messages, C concurrent submitters, one destination each
  drain    msg/s through DeliveryEngine to an in-process sink (N queued over L lanes), with
           the message-map write a real transport does
  e2e      msg/s accept -> engine -> in-process sink, producers and engine running together
  latency  p50/p99 added latency (accept() call -> sink) at a fixed offered rate (500 msg/s)
  rss      peak RSS with 10,000 queued messages over 1,000 lanes, then drained
  http     msg/s end to end to an HTTP sink (aiohttp server in a separate process on 127.0.0.1,
           transport POSTing JSON over a pooled ClientSession)
  ingest   mesh topic rows -> Pipeline (dedup, loop guard, routes, enqueue into the outbox; --batch rows
           handed over at once, as a topic poll does), engine
           not running, fan-out 2: rows/s, and rows per CPU-second of the process (all threads)
  routing  mesh topic rows -> Pipeline (dedup, loop guard, routes, enqueue, kick()) -> engine ->
           two in-process sink gateways (fan-out 2): rows/s, and p50/p99 row -> sink latency at
           half the --rate in rows/s (= --rate deliveries/s)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claudemesh_gateway.delivery import DeliveryConfig, DeliveryEngine
from claudemesh_gateway.gateway import RateLimit
from claudemesh_gateway.messages import (
    Address,
    Message,
    Outbound,
    SendResult,
    address_from_dict,
    address_to_dict,
    message_from_dict,
    message_to_dict,
)
from claudemesh_gateway.store.base import OutboxItem
from claudemesh_gateway.store.sqlite import SqliteStore

TEXT = "The deploy of build 4711 finished; 3 warnings, see the ops dashboard for details. " * 2


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_item(i: int, lanes: int) -> tuple[str, OutboxItem]:
    to = Address("telegram", str(-1000 - (i % lanes)))
    msg = Message(id=f"mesh:bench:{i}", origin=Address("mesh", "bench:#ops"), sender="alice", text=TEXT,
                  native_id=str(i))
    return msg.id, OutboxItem(lane=to.key, route="ops", destination=address_to_dict(to),
                              message=message_to_dict(msg), options={"attribution": True})


class SinkTransport:
    """In-process sink: renders like the core (dict -> Message, one part), records the message map."""

    def __init__(self, store: SqliteStore, *, map_writes: bool = True) -> None:
        self.store = store
        self.map_writes = map_writes
        self.count = 0
        self.arrivals: dict[str, float] = {}
        self.record_arrivals = False
        self.done = asyncio.Event()
        self.expect = 0

    async def render(self, item: OutboxItem) -> tuple[list[Outbound], Sequence[RateLimit]]:
        msg = message_from_dict(item.message)
        to = address_from_dict(item.destination)
        return [Outbound(message=msg, to=to, text=f"[{msg.sender}] {msg.text}", idempotency_key=msg.id)], ()

    async def send(self, out: Outbound) -> SendResult:
        self.count += 1
        if self.record_arrivals:
            self.arrivals[out.message.id] = time.perf_counter()
        if self.count >= self.expect:
            self.done.set()
        return SendResult(native_ids=(str(self.count),))

    async def delivered(self, item: OutboxItem, results: list[SendResult]) -> None:
        if self.map_writes:
            await self.store.map_put(item.message["id"], item.lane, [n for r in results for n in r.native_ids])


class HttpTransport(SinkTransport):
    def __init__(self, store: SqliteStore, session: Any, url: str) -> None:
        super().__init__(store)
        self.session = session
        self.url = url

    async def send(self, out: Outbound) -> SendResult:
        body = json.dumps({"chat": out.to.chat, "text": out.text, "key": out.idempotency_key})
        async with self.session.post(self.url, data=body, headers={"Content-Type": "application/json"}) as r:
            if r.status != 200:
                from claudemesh_gateway.errors import DeliveryError
                raise DeliveryError(f"HTTP {r.status}", retry_after=float(r.headers.get("Retry-After", 1)))
            data = await r.json()
        self.count += 1
        if self.count >= self.expect:
            self.done.set()
        return SendResult(native_ids=(str(data["id"]),))


async def open_store(args: argparse.Namespace, d: str) -> SqliteStore:
    s = SqliteStore(Path(d) / "bench.db", synchronous=args.synchronous, purge_interval=0)
    await s.open()
    return s


async def fill(store: SqliteStore, n: int, lanes: int, concurrency: int) -> float:
    items = [make_item(i, lanes) for i in range(n)]
    t = time.perf_counter()
    await submitters(store, items, concurrency, None)
    return time.perf_counter() - t


async def submitters(store: SqliteStore, items: list[tuple[str, OutboxItem]], concurrency: int,
                     eng: DeliveryEngine | None) -> None:
    """``concurrency`` sources, each accepting its next message as soon as the last one committed."""
    it = iter(items)

    async def source() -> None:
        for mid, item in it:
            await store.accept(mid, [item])
            if eng is not None:
                eng.kick(item.lane)

    await asyncio.gather(*(source() for _ in range(concurrency)))


def engine(store: SqliteStore, tr: Any, **cfg: Any) -> DeliveryEngine:
    return DeliveryEngine(store, tr, config=DeliveryConfig(default_limits={}, **cfg))


async def phase_accept(args: argparse.Namespace, d: str) -> dict[str, Any]:
    store = await open_store(args, d)
    dt = await fill(store, args.n, args.lanes, args.concurrency)
    stats = store.stats()
    await store.close()
    return {"accept_msg_per_s": round(args.n / dt), "commits": stats["batches"],
            "rows_per_commit": round(stats["ops"] / max(1, stats["batches"]), 1)}


async def phase_drain(args: argparse.Namespace, d: str) -> dict[str, Any]:
    store = await open_store(args, d)
    await fill(store, args.n, args.lanes, args.concurrency)
    tr = SinkTransport(store)
    tr.expect = args.n
    eng = engine(store, tr)
    t = time.perf_counter()
    await eng.start()
    await tr.done.wait()
    dt = time.perf_counter() - t
    await eng.stop(5)
    left = await store.outbox_count()
    await store.close()
    return {"drain_msg_per_s": round(args.n / dt), "lanes": args.lanes, "left_in_outbox": left}


async def phase_e2e(args: argparse.Namespace, d: str) -> dict[str, Any]:
    store = await open_store(args, d)
    tr = SinkTransport(store)
    tr.expect = args.n
    eng = engine(store, tr)
    await eng.start()
    items = [make_item(i, args.lanes) for i in range(args.n)]
    t = time.perf_counter()
    await submitters(store, items, args.concurrency, eng)
    await tr.done.wait()
    dt = time.perf_counter() - t
    await eng.stop(5)
    await store.close()
    return {"e2e_msg_per_s": round(args.n / dt)}


async def phase_latency(args: argparse.Namespace, d: str) -> dict[str, Any]:
    store = await open_store(args, d)
    tr = SinkTransport(store)
    tr.record_arrivals = True
    total = int(args.rate * args.seconds)
    tr.expect = total
    eng = engine(store, tr)
    await eng.start()
    items = [make_item(i, args.lanes) for i in range(total)]
    sent_at: dict[str, float] = {}
    tick = 0.01  # offer in 10 ms ticks
    per_tick = args.rate * tick
    tasks = []

    async def one(mid: str, it: OutboxItem) -> None:
        sent_at[mid] = time.perf_counter()
        await store.accept(mid, [it])
        eng.kick(it.lane)

    start = time.perf_counter()
    idx = 0
    k = 0
    while idx < total:
        k += 1
        upto = min(total, round(k * per_tick))
        while idx < upto:
            mid, it = items[idx]
            tasks.append(asyncio.ensure_future(one(mid, it)))
            idx += 1
        delay = start + k * tick - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    await asyncio.gather(*tasks)
    await asyncio.wait_for(tr.done.wait(), 30)
    await eng.stop(5)
    await store.close()
    lat = sorted((tr.arrivals[m] - sent_at[m]) * 1000 for m in sent_at)
    return {
        "offered_msg_per_s": args.rate, "messages": total,
        "latency_ms_p50": round(statistics.median(lat), 2),
        "latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1], 2),
        "latency_ms_max": round(lat[-1], 2),
    }


async def phase_rss(args: argparse.Namespace, d: str) -> dict[str, Any]:
    base = current_rss_mb()
    store = await open_store(args, d)
    await fill(store, 10_000, 1_000, args.concurrency)
    queued = current_rss_mb()
    tr = SinkTransport(store)
    tr.expect = 10_000
    eng = engine(store, tr)
    await eng.start()
    await tr.done.wait()
    await eng.stop(5)
    await store.close()
    return {"rss_mb_at_start": round(base, 1), "rss_mb_10k_queued_1k_lanes": round(queued, 1),
            "peak_rss_mb": round(rss_mb(), 1)}


SINK_SERVER = r"""
import asyncio, sys
from aiohttp import web
n = 0
async def post(request):
    global n
    await request.read()
    n += 1
    return web.json_response({"ok": True, "id": n})
app = web.Application()
app.router.add_post("/sink", post)
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def phase_http(args: argparse.Namespace, d: str) -> dict[str, Any]:
    import aiohttp

    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SINK_SERVER, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(await proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/sink"
        store = await open_store(args, d)
        n = args.http_n
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.lanes)) as session:
            tr = HttpTransport(store, session, url)
            tr.expect = n
            eng = engine(store, tr)
            await eng.start()
            items = [make_item(i, args.lanes) for i in range(n)]
            t = time.perf_counter()
            await submitters(store, items, args.concurrency, eng)
            await asyncio.wait_for(tr.done.wait(), 120)
            dt = time.perf_counter() - t
            await eng.stop(5)
        await store.close()
        return {"http_e2e_msg_per_s": round(n / dt), "messages": n, "lanes": args.lanes}
    finally:
        proc.terminate()
        await proc.wait()


class _RoutingRig:
    """A stub runtime around the real Pipeline, RouteTable and SqliteStore: 20 topics, each routed to
    two in-process sink gateways (fan-out 2). ``engine`` is the DeliveryEngine (not started)."""

    topics = 20

    def __init__(self, store: SqliteStore, *, trace: bool = False) -> None:
        from types import SimpleNamespace
        from typing import ClassVar

        from claudemesh_gateway.gateway import Gateway
        from claudemesh_gateway.messages import Capabilities
        from claudemesh_gateway.plugin_manager import make_plugin_manager
        from claudemesh_gateway.routing.pipeline import Pipeline
        from claudemesh_gateway.routing.table import RouteTable

        class SinkGateway(Gateway):
            kind: ClassVar[str] = "sink"
            capabilities: ClassVar[Capabilities] = Capabilities(max_text=4000, replies=True, edits=True)

            def __init__(self, name: str) -> None:
                self.name = name
                self.count = 0
                self.arrivals: dict[str, float] = {}
                self.done = asyncio.Event()
                self.expect = 0

            async def start(self) -> None: ...
            async def stop(self) -> None: ...

            async def send(self, out: Outbound) -> SendResult:
                self.count += 1
                self.arrivals[out.message.id] = time.perf_counter()
                if self.count >= self.expect:
                    self.done.set()
                return SendResult(native_ids=(str(self.count),))

        routes = [{"name": f"r{t}", "mesh": "m", "topic": f"t{t}",
                   "binds": [{"gateway": "sink_a", "chat": f"a{t}"}, {"gateway": "sink_b", "chat": f"b{t}"}]}
                  for t in range(self.topics)]
        self.gateways = {"sink_a": SinkGateway("sink_a"), "sink_b": SinkGateway("sink_b")}
        self.store = store
        self.runtime = SimpleNamespace(
            settings=SimpleNamespace(mesh={"m": None}, routes=routes),
            pm=make_plugin_manager(entry_points=False, builtins=False), store=store, gateways=self.gateways,
            meshes={"m": SimpleNamespace(pubkey="9f" * 32, member_id="gw")}, app=None, states={},
            emit=lambda event: None, delivery=None,
        )
        self.runtime.routes = RouteTable.build(routes, gateways=self.gateways, meshes=self.runtime.settings.mesh)
        self.pipeline = Pipeline(self.runtime)
        self.runtime.pipeline = self.pipeline
        from claudemesh_gateway.trace import TraceRecorder  # the message trace ([trace] enabled), --trace

        self.runtime.trace = self.trace = TraceRecorder(store, enabled=trace)
        self.trace.start()
        self.engine = DeliveryEngine(store, self.pipeline, config=DeliveryConfig(default_limits={}), trace=self.trace)

    def row(self, i: int) -> Any:
        from claudemesh_gateway.mesh.types import MeshInbound

        return MeshInbound(kind="topic", mesh="m", mesh_id="mesh-id", id=f"row-{i}", text=TEXT,
                           sender_pubkey="a1" * 32, sender_name="alice", topic=f"t{i % self.topics}",
                           created_at=1_700_000_000_000)

    async def submit_all(self, rows: list[Any], sent_at: dict[str, float], batch: int = 1) -> None:
        """As fast as the pollers can submit: one poller per topic, each awaiting the commit of what it
        handed over. ``batch`` > 1: a poller hands over up to that many rows at once, as the topic
        poller does with the rows of one poll (``on_mesh_inbound_many``)."""
        it = iter(rows)

        async def poller() -> None:
            while True:
                chunk = list(itertools.islice(it, batch))
                if not chunk:
                    return
                now = time.perf_counter()
                for r in chunk:
                    sent_at[f"mesh:m:{r.id}"] = now
                if batch == 1:
                    await self.pipeline.on_mesh_inbound(chunk[0])
                else:
                    await self.pipeline.on_mesh_inbound_many(chunk)

        await asyncio.gather(*(poller() for _ in range(self.topics)))


async def phase_ingest(args: argparse.Namespace, d: str) -> dict[str, Any]:
    """Mesh topic rows -> Pipeline (dedup, loop guard, route, enqueue into the outbox), no delivery."""
    store = await open_store(args, d)
    rig = _RoutingRig(store, trace=args.trace == "on")
    n = args.n // 2
    rows = [rig.row(i) for i in range(n)]
    cpu0, loop0, t = time.process_time(), time.thread_time(), time.perf_counter()
    await rig.submit_all(rows, {}, args.batch)
    dt, cpu, loop_cpu = time.perf_counter() - t, time.process_time() - cpu0, time.thread_time() - loop0
    await rig.trace.stop()
    queued = await store.outbox_count()
    stats = store.stats()
    await store.close()
    return {"ingest_rows_per_s": round(n / dt), "ingest_rows": n, "fanout": 2, "outbox_rows": queued,
            "ingest_cpu_s": round(cpu, 2), "ingest_rows_per_cpu_s": round(n / cpu),
            "ingest_rows_per_loop_cpu_s": round(n / loop_cpu),
            "commits": stats["batches"], "writes_per_commit": round(stats["ops"] / max(1, stats["batches"]), 1)}


async def phase_routing(args: argparse.Namespace, d: str) -> dict[str, Any]:
    """Mesh topic rows -> Pipeline (dedup, loop guard, route, enqueue) -> DeliveryEngine -> 2 sinks."""
    store = await open_store(args, d)
    rig = _RoutingRig(store, trace=args.trace == "on")
    rig.runtime.delivery = eng = rig.engine
    gateways = rig.gateways
    await eng.start()

    async def run(rows: list[Any], rate: float | None) -> tuple[float, dict[str, float]]:
        for g in gateways.values():
            g.expect = g.count + len(rows)
            g.done.clear()
        sent_at: dict[str, float] = {}
        t = time.perf_counter()
        if rate is None:
            await rig.submit_all(rows, sent_at, args.batch)
        else:
            tasks = []
            for k, r in enumerate(rows):
                delay = t + k / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at[f"mesh:m:{r.id}"] = time.perf_counter()
                tasks.append(asyncio.ensure_future(rig.pipeline.on_mesh_inbound(r)))
            await asyncio.gather(*tasks)
        await asyncio.wait_for(asyncio.gather(*(g.done.wait() for g in gateways.values())), 60)
        return time.perf_counter() - t, sent_at

    n = args.n // 4
    ru = resource.getrusage(resource.RUSAGE_SELF)
    dt, _ = await run([rig.row(i) for i in range(n)], None)
    ru2 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru2.ru_utime - ru.ru_utime) + (ru2.ru_stime - ru.ru_stime)  # all threads: less noisy than rows/s
    lat_rows = [rig.row(n + i) for i in range(int(args.rate * args.seconds / 2))]
    _, sent_at = await run(lat_rows, args.rate / 2)
    await eng.stop(5)
    await rig.trace.stop()
    await store.close()
    lat = sorted((g.arrivals[m] - sent_at[m]) * 1000 for g in gateways.values() for m in sent_at)
    return {
        "routing_rows_per_s": round(n / dt), "routing_deliveries_per_s": round(2 * n / dt),
        "routing_rows": n, "fanout": 2, "routing_rows_per_cpu_s": round(n / cpu), "trace": args.trace,
        "routing_cpu_ms_per_row": round(cpu * 1000 / n, 3),
        "routing_offered_rows_per_s": args.rate / 2,
        "routing_latency_ms_p50": round(statistics.median(lat), 2),
        "routing_latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1], 2),
    }


PHASES = {
    "accept": phase_accept, "drain": phase_drain, "e2e": phase_e2e, "latency": phase_latency,
    "rss": phase_rss, "http": phase_http, "ingest": phase_ingest, "routing": phase_routing,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=[*PHASES, "all"], default="all")
    p.add_argument("--n", type=int, default=20_000, help="messages for accept/drain/e2e")
    p.add_argument("--http-n", type=int, default=10_000, help="messages for the HTTP phase")
    p.add_argument("--lanes", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=1000, help="concurrent accept() callers")
    p.add_argument("--rate", type=float, default=500.0, help="offered msg/s for the latency phase")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the latency phase")
    p.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    p.add_argument("--dir", default=None, help="where the database goes (default: a temp dir)")
    p.add_argument("--trace", choices=["on", "off"], default="on", help="message trace in the routing phase")
    p.add_argument("--batch", type=int, default=50,
                   help="ingest/routing: rows a poller hands over at once (the topic poller: up to 50, "
                        "what one poll brought); 1: one on_mesh_inbound per row")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.phase == "all":
        print(f"# python {sys.version.split()[0]}, synchronous={args.synchronous}, cpus={os.cpu_count()}")
        for name in PHASES:
            cmd = [sys.executable, __file__, "--phase", name, "--n", str(args.n), "--http-n", str(args.http_n),
                   "--lanes", str(args.lanes), "--concurrency", str(args.concurrency), "--rate", str(args.rate),
                   "--seconds", str(args.seconds), "--synchronous", args.synchronous, "--trace", args.trace,
                   "--batch", str(args.batch)]
            if args.dir:
                cmd += ["--dir", args.dir]
            subprocess.run(cmd, check=True)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        t = time.perf_counter()
        result = asyncio.run(PHASES[args.phase](args, d))
        result["phase_seconds"] = round(time.perf_counter() - t, 1)
        result["peak_rss_mb"] = round(rss_mb(), 1)
    print(json.dumps({"phase": args.phase, **result}), flush=True)


if __name__ == "__main__":
    main()
