#!/usr/bin/env python3
"""Benchmark: ingest latency of a post in an idle topic, through the whole app. Run by hand.

    .venv/bin/python bench/bench_idle_ingest.py                    # 20 posts, 4 s apart, 1 topic
    .venv/bin/python bench/bench_idle_ingest.py --topics 100 --budget 100

A dev broker and the gateway app (as ``run`` builds it, default mesh timers) on loopback, one
webhook route per topic to a loopback HTTP sink. A member posts into the first topic every
``--gap`` seconds (plus a random phase, so posts land anywhere in the poll cycle); latency is the
sink's arrival time minus the time just before ``post_topic``. Also printed: topic_history
requests/s the gateway spent, per topic and for the mesh (``topic_poll_budget`` caps the latter).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from claudemesh_gateway.devbroker import DevBroker
from claudemesh_gateway.testing import build_test_app, mesh_member


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    arrived: dict[str, float] = {}
    news = asyncio.Event()

    async def sink(request: web.Request) -> web.Response:
        body = await request.json()
        arrived.setdefault(str(body.get("text", "")), time.time())
        news.set()
        return web.json_response({"ok": True})

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = DevBroker(root / "broker")
        await broker.start()
        broker.set_rate_limit(1000, 600_000)
        seed = broker.default_mesh
        names = ["general"]
        for i in range(1, args.topics):
            info = broker.create_topic(seed.mesh_id, f"idle-{i:04d}", seed.gateway.member_id, encrypted=False)
            names.append(info.name)
        runner = web.AppRunner(web.Application())
        runner.app.router.add_post("/sink/{chat}", sink)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        routes = [{"name": f"r-{n}", "mesh": "dev", "topic": n, "direction": "out",
                   "binds": [{"gateway": "wh", "chat": n, "options": {"url": f"http://127.0.0.1:{port}/sink/{n}"}}]}
                  for n in names]
        client, runtime = await build_test_app(
            {"gateways": {"wh": {"type": "webhook", "secret": "bench-secret-0123456789abcdef"}}, "routes": routes,
             "log": {"level": "WARNING"}, "mesh": {"dev": {"topic_poll_budget": args.budget}}},
            state_dir=root / "gw", broker=broker)
        alice = None
        try:
            peer = runtime.meshes["dev"]
            await peer.wait_connected(10)
            t_ready = time.monotonic()
            while len([p for p in peer.pollers.values() if p.initialized]) < len(names):
                if time.monotonic() - t_ready > 600:
                    raise SystemExit("the pollers did not start")
                await asyncio.sleep(0.1)
            alice = await mesh_member(broker, "dev_alice")
            await asyncio.sleep(args.gap)  # the topic goes quiet: its period climbs to the idle ceiling
            polls0 = {n: p.polls for n, p in peer.pollers.items()}
            t0 = time.monotonic()
            latencies: list[float] = []
            for i in range(args.posts):
                await asyncio.sleep(args.gap + random.uniform(0, 2))
                text = f"idle post {i}"
                sent = time.time()
                await alice.post_topic("general", text)
                want = f"alice: {text}"
                while want not in arrived:
                    news.clear()
                    await news.wait()
                latencies.append(arrived[want] - sent)
            elapsed = time.monotonic() - t0
            polls = {n: p.polls - polls0[n] for n, p in peer.pollers.items()}
            idle = [polls[n] / elapsed for n in names[1:]] or [0.0]
            print(f"topics={len(names)} posts={args.posts} gap={args.gap}s+U(0,2)s "
                  f"topic_poll_idle_interval={peer.cfg.topic_poll_idle_interval}s "
                  f"topic_poll_budget={peer.cfg.topic_poll_budget}/s")
            print(f"idle-topic ingest latency: p50 {statistics.median(latencies):.3f} s, "
                  f"p99 {_pct(latencies, 0.99):.3f} s, max {max(latencies):.3f} s")
            print(f"topic_history polls/s: posting topic {polls['general'] / elapsed:.2f}, "
                  f"each idle topic {statistics.mean(idle):.2f}, mesh total {sum(polls.values()) / elapsed:.2f}")
        finally:
            if alice is not None:
                await alice.stop()
            await client.close()
            await runner.cleanup()
            await broker.stop()


def _args(argv: Any = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=20)
    ap.add_argument("--gap", type=float, default=4.0, help="seconds between posts (plus U(0, 2) s)")
    ap.add_argument("--topics", type=int, default=1, help="watched topics (the others stay idle)")
    ap.add_argument("--budget", type=float, default=10.0, help="[mesh] topic_poll_budget (requests/s)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(_args()))
