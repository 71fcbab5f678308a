#!/usr/bin/env python3
"""Whole-app benchmark: the path an operator runs. Run by hand; not part of the test suite.

    .venv/bin/python bench/bench_whole_app.py                      # every phase (a few minutes)
    .venv/bin/python bench/bench_whole_app.py --phase throughput   # one phase
    .venv/bin/python bench/bench_whole_app.py --idle-topics 10,100,1000 --messages 8000

Each phase runs in a world of its own: three subprocesses on spare loopback ports, set up the way
``claudemesh-gateway run`` is with an external broker:

  broker   the dev broker (``claudemesh_gateway.devbroker``, in memory) with topics bench-0..N-1
           (members gateway, alice, bob) and a small control port for this script (frame counts
           per member, topic rows, its per-member rate limit)
  sink     an HTTP sink for the webhook gateway: records each POST's arrival time and payload ``ts``
  gateway  ``python -m claudemesh_gateway -c <tmp>/config.toml run``: an example-like config
           ([server], [gateways.webhook] pointing at the sink, one route per topic, both ways,
           each bound to webhook chat sink-<i>), log level WARNING, store on disk in the temp dir

Phases (figures are printed as they come, then one JSON summary line):
  idle        ingest latency of a post in an idle topic: --idle-posts posts --idle-gap s apart into
              one topic that had no traffic (p50/p99 of the sink's received_at - the post's createdAt)
  throughput  topic post -> HTTP sink: --messages posts over --topics topics by alice and bob
              (--posters in flight); delivered msg/s, p50/p99 latency, and the gateway process's
              CPU-seconds (msg per CPU-second = what one core of the gateway carries). The dev
              broker's per-member limit (burst 10, 60/min, like the real broker's) is LIFTED for
              this phase (DevBrokerConfig.rate_burst / rate_per_minute), and the posters' own
              client buckets with it, so the broker is not the bottleneck
  webhook     signed webhook -> topic: --webhook-n signed POSTs to /gateways/webhook/sink-0 at once;
              the broker's per-member limit (burst 10, then 1/s) bounds what reaches the topic,
              and the figure shows the gateway posting at that limit with no refused send
  trace       the throughput phase twice, [trace] enabled = true then false: what the message
              trace costs per message (CPU-seconds and msg/s, on vs off)
  topics      gateway CPU (% of one core) and its topic_history requests/s at the broker while
              idle, for each count of --idle-topics; then idle-topic ingest latency there
              (--topic-posts posts, each into a different idle topic)
Peak RSS of the gateway process (VmHWM) is reported per phase.

The machine is what it is: note the load (printed) next to any figure you quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Self

HERE = Path(__file__).resolve()
SECRET = "bench-only-webhook-secret-0123456789"
BROKER_DEFAULT_RATE = (10, 60.0)  # the real broker's per-member limit (A.7.3): burst 10, 60 a minute
LIFTED_RATE = (1_000_000, 60_000_000.0)


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]  # nearest rank


# -- /proc ---------------------------------------------------------------------------------------------
def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU-seconds (user + system) of process ``pid``, or of its thread ``tid`` alone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- role: broker ----------------------------------------------------------------------------------------
async def role_broker(args: argparse.Namespace) -> None:
    from aiohttp import web
    from claudemesh_gateway.devbroker import DevBroker
    from claudemesh_gateway.devbroker.config import DevBrokerConfig

    burst, per_minute = LIFTED_RATE if args.lift_rate else BROKER_DEFAULT_RATE
    broker = DevBroker(None, "127.0.0.1", args.port, config=DevBrokerConfig(rate_burst=burst, rate_per_minute=per_minute))
    await broker.start()
    seed = broker.default_mesh
    mesh_id = seed.mesh.mesh_id
    topics = {}
    for i in range(args.topics):
        t = broker.create_topic(mesh_id, f"bench-{i}", seed.gateway.member_id, encrypted=False)
        for m in (seed.alice, seed.bob):
            broker.join_topic(mesh_id, t.topic_id, m.member_id)
        topics[t.topic_id] = f"bench-{i}"
    names = {seed.gateway.member_id: "gateway", seed.alice.member_id: "alice", seed.bob.member_id: "bob"}

    async def stats(request: web.Request) -> web.Response:
        frames: dict[str, dict[str, int]] = {}
        for (member, kind), n in broker.frame_counts.items():
            frames.setdefault(names.get(member, member), {})[kind] = n
        return web.json_response({"frames": frames})

    async def rows(request: web.Request) -> web.Response:
        topic = request.query["topic"]
        out = [{"id": m.id, "created_ms": m.created_at, "sender": names.get(m.sender_member_id, "?")}
               for m in broker.topic_messages(mesh_id) if topics.get(m.topic_id) == topic]
        return web.json_response(out)

    async def rate(request: web.Request) -> web.Response:
        body = await request.json()
        broker.set_rate_limit(int(body["burst"]), float(body["per_minute"]))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/rows", rows)
    app.router.add_post("/rate", rate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.ctl_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"tables": broker.mesh_tables()}), flush=True)
    await stop.wait()
    await runner.cleanup()
    await broker.stop()


# -- role: sink --------------------------------------------------------------------------------------------
async def role_sink(args: argparse.Namespace) -> None:
    from aiohttp import web

    arrivals: list[tuple[float, float, str, str]] = []  # (received_at, post createdAt, message id, chat)

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        received = time.time()
        data = json.loads(body)
        ts = datetime.fromisoformat(data["ts"]).timestamp()
        arrivals.append((received, ts, data.get("id", ""), request.match_info["chat"]))
        return web.json_response({"ok": True, "id": len(arrivals)})

    async def got(request: web.Request) -> web.Response:
        since = int(request.query.get("since", 0))
        return web.json_response({"count": len(arrivals), "arrivals": arrivals[since:]})

    app = web.Application()
    app.router.add_post("/sink/{chat}", post)
    app.router.add_get("/arrivals", got)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


# -- the world: broker + sink + gateway ----------------------------------------------------------------------
def toml_value(v: Any) -> str:
    """A TOML value (inline tables and arrays too: the dev broker's mesh table has ``rest = {...}``)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def config_toml(port: int, sink_port: int, topics: int, *, trace: bool = True) -> str:
    lines = [
        '# written by bench/bench_whole_app.py: config.example.toml with an external (dev) broker',
        'include = ["meshes.toml"]', "",
        "[server]", 'host = "127.0.0.1"', f"port = {port}", 'state_dir = "var"', "shutdown_timeout = 5", "",
        "[dev_broker]", "embedded = false", "",
        "[log]", 'level = "WARNING"', "",
        *([] if trace else ["[trace]", "enabled = false", ""]),
        "[gateways.webhook]", f'secret = "{SECRET}"', f'url = "http://127.0.0.1:{sink_port}/sink/default"', "",
    ]
    for i in range(topics):
        lines += ["[[routes]]", f'name = "bench-{i}"', 'mesh = "dev"', f'topic = "bench-{i}"', 'direction = "both"',
                  (f'binds = [{{ gateway = "webhook", chat = "sink-{i}", options = {{ url = '
                   f'"http://127.0.0.1:{sink_port}/sink/sink-{i}" }} }}]'), ""]
    return "\n".join(lines)


class World:
    """Broker, sink and gateway subprocesses in a temp dir; ``async with World(...) as w``."""

    def __init__(self, args: argparse.Namespace, topics: int, *, lift_rate: bool = False) -> None:
        self.args = args
        self.topics = topics
        self.lift_rate = lift_rate
        self.procs: list[subprocess.Popen[bytes]] = []
        self.http: Any = None

    async def __aenter__(self) -> Self:
        import aiohttp

        self.tmp = tempfile.TemporaryDirectory(dir=self.args.dir)
        d = Path(self.tmp.name)
        self.broker_port, self.ctl_port, self.sink_port, self.port = (free_port() for _ in range(4))
        self.http = aiohttp.ClientSession()
        broker = self._spawn(["--role", "broker", "--port", str(self.broker_port), "--ctl-port", str(self.ctl_port),
                              "--topics", str(self.topics), *(["--lift-rate"] if self.lift_rate else [])],
                             stdout=subprocess.PIPE)
        line = await asyncio.get_running_loop().run_in_executor(None, broker.stdout.readline)  # type: ignore[union-attr]
        self.tables = json.loads(line)["tables"]
        sink = self._spawn(["--role", "sink", "--port", str(self.sink_port)], stdout=subprocess.PIPE)
        await asyncio.get_running_loop().run_in_executor(None, sink.stdout.readline)  # type: ignore[union-attr]
        gw = self.tables["dev"]
        (d / "meshes.toml").write_text("[mesh.dev]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in gw.items()))
        (d / "config.toml").write_text(config_toml(self.port, self.sink_port, self.topics,
                                                  trace=getattr(self.args, "trace", "on") != "off"))
        t0 = time.monotonic()
        self.gateway = self._spawn(["-m", "claudemesh_gateway", "-c", str(d / "config.toml"), "run"], cwd=d,
                                   script=False)
        # every topic's first poll comes out of the mesh's topic_poll_budget (10 req/s): ~100 s for 1,000
        await self._wait_ready(120 + self.topics * 0.3)
        self.startup_s = time.monotonic() - t0
        return self

    def _spawn(self, argv: list[str], *, script: bool = True, **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, *([str(HERE)] if script else []), *argv], **kw)
        self.procs.append(p)
        return p

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/-/ready"
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.gateway.returncode}")
            try:
                async with self.http.get(url) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("the gateway did not become ready")

    async def __aexit__(self, *exc: object) -> None:
        for p in reversed(self.procs):  # the gateway first, then the sink and the broker
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, p.wait, 15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        await self.http.close()
        self.tmp.cleanup()

    # -- probes ----------------------------------------------------------------------------------------
    async def frames(self, who: str = "gateway") -> dict[str, int]:
        async with self.http.get(f"http://127.0.0.1:{self.ctl_port}/stats") as r:
            return (await r.json())["frames"].get(who, {})

    async def topic_rows(self, topic: str) -> list[dict[str, Any]]:
        async with self.http.get(f"http://127.0.0.1:{self.ctl_port}/rows", params={"topic": topic}) as r:
            return await r.json()

    async def set_broker_rate(self, burst: float, per_minute: float) -> None:
        async with self.http.post(f"http://127.0.0.1:{self.ctl_port}/rate",
                                  json={"burst": burst, "per_minute": per_minute}) as r:
            r.raise_for_status()

    async def arrivals(self, since: int = 0) -> list[list[Any]]:
        async with self.http.get(f"http://127.0.0.1:{self.sink_port}/arrivals", params={"since": since}) as r:
            return (await r.json())["arrivals"]

    async def wait_arrivals(self, n: int, since: int, timeout: float) -> list[list[Any]]:
        deadline = time.monotonic() + timeout
        got: list[list[Any]] = []
        while time.monotonic() < deadline:
            got = await self.arrivals(since)
            if len(got) >= n:
                return got
            await asyncio.sleep(0.05)
        return got

    def profile(self, out: str) -> subprocess.Popen[bytes]:
        """py-spy (``pip install py-spy``) sampling the gateway into ``out``: collapsed stacks of the thread
        holding the GIL (where the CPU goes, not who waits)."""
        spy = Path(sys.executable).with_name("py-spy")
        return subprocess.Popen([str(spy) if spy.exists() else "py-spy", "record", "--pid", str(self.gateway.pid),
                                 "--gil", "-r", "200", "-f", "raw", "-o", out], stdout=subprocess.DEVNULL)

    def cpu(self) -> float:
        return cpu_seconds(self.gateway.pid)

    def others_cpu(self) -> tuple[float, float]:
        """CPU-seconds of the dev broker and of the sink (they share the machine with the gateway)."""
        return cpu_seconds(self.procs[0].pid), cpu_seconds(self.procs[1].pid)

    def loop_cpu(self) -> float:
        """The event loop's thread (the main thread); SQLite and DNS work runs in other threads."""
        return cpu_seconds(self.gateway.pid, self.gateway.pid)

    def rss(self) -> float:
        return peak_rss_mb(self.gateway.pid)

    async def posters(self, *, lifted: bool) -> list[Any]:
        """Mesh peers for alice and bob (their client buckets lifted along with the broker's)."""
        from claudemesh_gateway.mesh.config import MeshConfig
        from claudemesh_gateway.mesh.peer import MeshPeer
        from claudemesh_gateway.mesh.state import MemoryKV

        peers = []
        for name in ("dev_alice", "dev_bob"):
            table = dict(self.tables[name])
            if lifted:
                table.update(rate_burst=LIFTED_RATE[0], rate_per_minute=LIFTED_RATE[1])
            peer = MeshPeer(name, MeshConfig.model_validate(table), kv=MemoryKV(), identity="cli")
            await peer.start()
            await peer.wait_connected(15)
            peers.append(peer)
        return peers


def latencies_ms(arrivals: list[list[Any]]) -> list[float]:
    return [(received - created) * 1000 for received, created, _id, _chat in arrivals]


def lat_summary(lat: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(lat, 50)), "p99_ms": round(pct(lat, 99)), "max_ms": round(max(lat)) if lat else 0}


# -- phases ---------------------------------------------------------------------------------------------------
async def phase_idle(args: argparse.Namespace) -> dict[str, Any]:
    async with World(args, args.topics) as w:
        peers = await w.posters(lifted=False)
        try:
            await asyncio.sleep(args.settle)  # every poller backs off to its idle interval
            topic, lat, rng = "bench-0", [], random.Random(8)
            for k in range(args.idle_posts):
                since = len(await w.arrivals())
                await peers[k % 2].post_topic(topic, f"idle post {k}", find_id=False)
                got = await w.wait_arrivals(1, since, 30)
                lat += latencies_ms(got[:1])
                print(f"  idle post {k + 1}/{args.idle_posts}: {lat[-1]:.0f} ms" if got else "  lost", flush=True)
                if k + 1 < args.idle_posts:  # --idle-gap s apart, give or take a second (no lockstep)
                    await asyncio.sleep(args.idle_gap + rng.uniform(-1, 1))
            rss = w.rss()
        finally:
            for p in peers:
                await p.stop()
    out = {"idle_posts": args.idle_posts, "idle_gap_s": args.idle_gap, **{f"idle_{k}": v for k, v in
           lat_summary(lat).items()}, "peak_rss_mb": round(rss, 1), "load": load()}
    print(f"idle-topic ingest: {args.idle_posts} posts {args.idle_gap:g} s apart into one idle topic: "
          f"p50 {out['idle_p50_ms']} ms, p99 {out['idle_p99_ms']} ms (max {out['idle_max_ms']} ms); {load()}")
    return out


async def phase_throughput(args: argparse.Namespace) -> dict[str, Any]:
    async with World(args, args.topics, lift_rate=True) as w:
        peers = await w.posters(lifted=True)
        try:
            # warm up: one post per topic, so every poller runs at its active interval
            since = len(await w.arrivals())
            await asyncio.gather(*(peers[i % 2].post_topic(f"bench-{i}", "warm-up", find_id=False)
                                   for i in range(args.topics)))
            await w.wait_arrivals(args.topics, since, 60)
            since = len(await w.arrivals())
            n = args.messages
            queue = iter(range(n))
            text = "The deploy of build 4711 finished; 3 warnings, see the ops dashboard. "

            async def poster(j: int) -> None:
                for i in queue:
                    await peers[j % 2].post_topic(f"bench-{i % args.topics}", f"{text}#{i}", find_id=False)

            spy = w.profile(args.py_spy) if args.py_spy else None
            others0 = w.others_cpu()
            cpu0, loop0, t0 = w.cpu(), w.loop_cpu(), time.time()
            await asyncio.gather(*(poster(j) for j in range(args.posters)))
            posted_s = time.time() - t0
            got = await w.wait_arrivals(n, since, 120)
            cpu, loop_cpu = w.cpu() - cpu0, w.loop_cpu() - loop0
            broker_cpu, sink_cpu = (b - a for a, b in zip(others0, w.others_cpu(), strict=True))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                await asyncio.get_running_loop().run_in_executor(None, spy.wait, 30)
            last = max((a[0] for a in got), default=t0)
            rss = w.rss()
        finally:
            for p in peers:
                await p.stop()
    wall = last - t0
    out = {"messages": n, "topics": args.topics, "posters": args.posters, "delivered": len(got),
           "posted_msg_per_s": round(n / posted_s), "delivered_msg_per_s": round(len(got) / wall),
           "gateway_cpu_s": round(cpu, 2), "msg_per_gateway_cpu_s": round(len(got) / cpu) if cpu else None,
           "gateway_loop_cpu_s": round(loop_cpu, 2),
           "msg_per_loop_cpu_s": round(len(got) / loop_cpu) if loop_cpu else None,
           "gateway_cores_busy": round(cpu / wall, 2), "broker_cpu_s": round(broker_cpu, 2),
           "sink_cpu_s": round(sink_cpu, 2), **lat_summary(latencies_ms(got)),
           "peak_rss_mb": round(rss, 1), "broker_rate_limit": "lifted (benchmark-only DevBrokerConfig)",
           "load": load()}
    print(f"topic post -> HTTP sink: {len(got)}/{n} messages over {args.topics} topics in {wall:.1f} s: "
          f"{out['delivered_msg_per_s']} msg/s delivered (posted at {out['posted_msg_per_s']} msg/s); "
          f"gateway CPU {cpu:.1f} s = {out['msg_per_gateway_cpu_s']} msg per CPU-second "
          f"({out['gateway_cores_busy']} cores busy; event-loop thread {loop_cpu:.1f} s = "
          f"{out['msg_per_loop_cpu_s']} msg per CPU-second; dev broker CPU {broker_cpu:.1f} s, sink "
          f"{sink_cpu:.1f} s); latency p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms; "
          f"peak RSS {rss:.0f} MB; dev broker per-member limit LIFTED for this phase; {load()}")
    return out


async def phase_trace(args: argparse.Namespace) -> dict[str, Any]:
    """The message trace's cost: the throughput phase with ``[trace] enabled`` on, then off."""
    runs: dict[str, dict[str, Any]] = {}
    for mode in ("on", "off"):
        print(f"  trace {mode}:", flush=True)
        runs[mode] = await phase_throughput(argparse.Namespace(**{**vars(args), "trace": mode}))
    on, off = runs["on"], runs["off"]

    def ratio(key: str) -> float | None:
        return round(on[key] / off[key], 3) if on.get(key) and off.get(key) else None

    out = {"trace_on": on, "trace_off": off, "cpu_per_msg_on_vs_off": ratio("gateway_cpu_s"),
           "msg_per_cpu_s_on_vs_off": ratio("msg_per_gateway_cpu_s"), "load": load()}
    print(f"message trace cost: msg per gateway CPU-second {on['msg_per_gateway_cpu_s']} (trace on) vs "
          f"{off['msg_per_gateway_cpu_s']} (off) = {out['msg_per_cpu_s_on_vs_off']}x; delivered msg/s "
          f"{on['delivered_msg_per_s']} vs {off['delivered_msg_per_s']}; {load()}")
    return out


async def phase_webhook(args: argparse.Namespace) -> dict[str, Any]:
    from claudemesh_gateway.plugins.webhook.signature import signature_headers

    async with World(args, 1) as w:
        await asyncio.sleep(2)
        before = await w.frames()
        url = f"http://127.0.0.1:{w.port}/gateways/webhook/sink-0"

        async def one(i: int) -> int:
            body = json.dumps({"id": f"bench-{i}", "sender": "bench", "text": f"webhook {i}"}).encode()
            headers = {"Content-Type": "application/json", **signature_headers(SECRET, body)}
            async with w.http.post(url, data=body, headers=headers) as r:
                return r.status

        t0 = time.time()
        statuses = await asyncio.gather(*(one(i) for i in range(args.webhook_n)))
        accepted_s = time.time() - t0
        deadline = time.monotonic() + args.webhook_n * 1.5 + 30
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = [r for r in await w.topic_rows("bench-0") if r["sender"] == "gateway"]
            if len(rows) >= args.webhook_n:
                break
            await asyncio.sleep(0.25)
        after = await w.frames()
        rss = w.rss()
    created = sorted(r["created_ms"] / 1000 for r in rows)
    burst = BROKER_DEFAULT_RATE[0]
    steady = (len(created) - burst) / (created[-1] - created[burst - 1]) if len(created) > burst + 1 else None
    sends = after.get("send", 0) - before.get("send", 0)
    out = {"webhooks": args.webhook_n, "http_200": statuses.count(200),
           "accepted_msg_per_s": round(args.webhook_n / accepted_s), "in_topic": len(rows),
           "topic_msg_per_s_after_burst": round(steady, 2) if steady else None,
           "broker_limit": f"burst {burst}, {BROKER_DEFAULT_RATE[1] / 60:g}/s per member",
           "send_frames": sends, "refused_sends": sends - len(rows), "peak_rss_mb": round(rss, 1), "load": load()}
    print(f"signed webhook -> topic: {out['http_200']}/{args.webhook_n} accepted (HTTP 200) at "
          f"{out['accepted_msg_per_s']} msg/s; {len(rows)} reached the topic: the first {burst} at once, then "
          f"{out['topic_msg_per_s_after_burst']} msg/s = the broker's per-member limit "
          f"({out['broker_limit']}); {sends} send frames, {out['refused_sends']} refused; {load()}")
    return out


async def phase_topics(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for n in [int(x) for x in args.idle_topics.split(",") if x]:
        async with World(args, n) as w:
            peers = await w.posters(lifted=False)
            try:
                await asyncio.sleep(args.settle)
                f0, c0, t0 = (await w.frames()).get("topic_history", 0), w.cpu(), time.monotonic()
                await asyncio.sleep(args.window)
                f1, c1, t1 = (await w.frames()).get("topic_history", 0), w.cpu(), time.monotonic()
                lat: list[float] = []
                rng = random.Random(n)
                for k in range(args.topic_posts):  # each into a different topic, idle since the start
                    since = len(await w.arrivals())
                    await peers[k % 2].post_topic(f"bench-{(k * 7919) % n}", f"idle {k}", find_id=False)
                    # a quiet topic is polled every max(1.5 s, topics / topic_poll_budget): 100 s at 1,000
                    lat += latencies_ms((await w.wait_arrivals(1, since, 30 + 2 * n / 10))[:1])
                    await asyncio.sleep(rng.uniform(0.5, 5.5))  # not in step with the pollers' rhythm
                rss = w.rss()
            finally:
                for p in peers:
                    await p.stop()
        dt = t1 - t0
        r = {"topics": n, "startup_s": round(w.startup_s, 1), "idle_cpu_pct_of_one_core": round(100 * (c1 - c0) / dt, 1),
             "topic_history_per_s": round((f1 - f0) / dt, 1), "per_topic_per_s": round((f1 - f0) / dt / n, 3),
             **{f"ingest_{k}": v for k, v in lat_summary(lat).items()}, "peak_rss_mb": round(rss, 1), "load": load()}
        results.append(r)
        print(f"idle with {n} topics (ready {r['startup_s']} s after start): gateway CPU {r['idle_cpu_pct_of_one_core']}% of one core, "
              f"{r['topic_history_per_s']} topic_history req/s at the broker ({r['per_topic_per_s']} per topic); "
              f"ingest of {args.topic_posts} posts into idle topics p50 {r['ingest_p50_ms']} ms, "
              f"p99 {r['ingest_p99_ms']} ms; peak RSS {rss:.0f} MB; {load()}", flush=True)
    return {"idle_topics": results}


PHASES = {"idle": phase_idle, "throughput": phase_throughput, "webhook": phase_webhook, "topics": phase_topics,
          "trace": phase_trace}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=[*PHASES, "all"], default="all")
    p.add_argument("--topics", type=int, default=20, help="topics (routes) in the idle and throughput phases")
    p.add_argument("--messages", type=int, default=4000, help="posts in the throughput phase")
    p.add_argument("--posters", type=int, default=64, help="posts in flight in the throughput phase")
    p.add_argument("--webhook-n", type=int, default=30, help="signed webhooks in the webhook phase")
    p.add_argument("--idle-posts", type=int, default=8)
    p.add_argument("--idle-gap", type=float, default=6.0, help="seconds between idle-topic posts")
    p.add_argument("--idle-topics", default="10,100,1000", help="topic counts for the idle CPU phase")
    p.add_argument("--topic-posts", type=int, default=4, help="idle-topic posts per count in the topics phase")
    p.add_argument("--settle", type=float, default=12.0, help="seconds for pollers to reach their idle interval")
    p.add_argument("--window", type=float, default=15.0, help="seconds of idle CPU measurement")
    p.add_argument("--trace", choices=["on", "off"], default="on",
                   help="[trace] enabled in the gateway's config (the trace phase runs throughput both ways)")
    p.add_argument("--py-spy", metavar="OUT", help="throughput phase: sample the gateway with py-spy into OUT")
    p.add_argument("--dir", default=None, help="where the temp dirs go (default: the system temp dir)")
    # subprocess roles
    p.add_argument("--role", choices=["broker", "sink"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ctl-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--lift-rate", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "broker":
        asyncio.run(role_broker(args))
        return
    if args.role == "sink":
        asyncio.run(role_sink(args))
        return
    print(f"# python {sys.version.split()[0]}, cpus={os.cpu_count()}, {load()}", flush=True)
    summary: dict[str, Any] = {}
    for name in (PHASES if args.phase == "all" else [args.phase]):
        t = time.monotonic()
        summary[name] = asyncio.run(PHASES[name](args))
        summary[name]["phase_seconds"] = round(time.monotonic() - t, 1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
