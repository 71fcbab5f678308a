"""A harness for fault tests through the whole app: run ``claudemesh-gateway run`` as a subprocess
(exactly what an operator starts), feed it from both directions, count what arrives at both kinds
of sink, and kill / restart things in between.

The pieces, each usable on its own:

- :class:`GatewayProcess`: the real console script from a config file; ``start()`` (waits for
  ``/-/health`` or ``/-/ready``), ``kill()`` (SIGKILL), ``stop()`` (SIGTERM), ``tail()`` of its log.
- :func:`two_way_config`: one config with both directions on the dev broker: mesh topic
  ``general`` -> webhook sink chat ``out`` (lane :data:`M2W_LANE`) and signed webhooks on chat
  ``in`` -> mesh topic ``hooks`` (lane :data:`W2M_LANE`). The gateway's own mesh limiter and the
  broker's per-member bucket (60/min by default) are both lifted, or webhook -> mesh would carry
  one message a second and a test in the hundreds would take minutes.
- :class:`MeshPoster` and :class:`WebhookPoster`: the two sources, each retrying as a real one
  would (a vendor re-posts until it gets a 200); ``gate`` pauses them.
- :class:`Ledger`: the counts. ``snapshot(label)`` at each fault records per lane what the sinks
  hold and which of those items are still queued in the gateway's outbox (*in flight*: delivered
  but not yet recorded, so a restart may send them again). ``report()`` prints sent / delivered /
  lost / duplicated per lane and in flight / duplicates per fault; ``check()`` asserts nothing
  was lost and every duplicate is one that was in flight at the fault just before it.
- :func:`restart_broker`: stop the dev broker (abruptly: connections dropped without a close
  frame, as when its process dies) and start a fresh one on the same port and state.

Counts scale with ``CLAUDEMESH_FAULT_SCALE`` (default 1: hundreds of messages, the suite's
bounded run; e.g. 10 for the "thousands in flight" run). Nothing here measures time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from claudemesh_gateway.delivery.transport import client_message_id
from claudemesh_gateway.devbroker import DevBroker
from claudemesh_gateway.plugins.webhook.testing import WebhookSink, signed_post

__all__ = [
    "EXE",
    "M2W_LANE",
    "SCALE",
    "W2M_LANE",
    "WH_SECRET",
    "GatewayProcess",
    "Lane",
    "Ledger",
    "MeshPoster",
    "WebhookPoster",
    "fill_disk",
    "free_port",
    "hooks_topic",
    "mount_tmpfs",
    "outbox_ids",
    "restart_broker",
    "running",
    "scaled",
    "sources_done",
    "to_toml",
    "two_way_config",
    "two_way_lanes",
    "unmount",
    "within",
]

EXE = Path(sys.executable).with_name("claudemesh-gateway")
SCALE = float(os.environ.get("CLAUDEMESH_FAULT_SCALE", "1") or 1)
WH_SECRET = "faults-webhook-secret-0123456789abcdef"
M2W_LANE = "wh/out"            # mesh topic ``general`` -> webhook sink chat ``out``
W2M_LANE = "mesh/dev:#hooks"   # webhook chat ``in`` -> mesh topic ``hooks``
LIFTED = {"rate_per_minute": 600_000.0, "rate_burst": 1000}
FAST_POLL = {"topic_poll_interval": 0.1, "topic_poll_idle_interval": 0.2, "roster_refresh": 1.0}


def scaled(n: int) -> int:
    """``n`` times ``CLAUDEMESH_FAULT_SCALE``, at least 1."""
    return max(1, round(n * SCALE))


def within(seconds: float) -> float:
    """A wait (or a test's timeout) of ``seconds`` at scale 1, stretched with the counts above it."""
    return seconds * max(1.0, SCALE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- config ------------------------------------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(cfg: dict[str, Any]) -> str:
    """TOML for the config shapes used here: scalars, nested tables, arrays of tables (``routes``)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))]

    def table(prefix: str, d: dict[str, Any]) -> None:
        flat = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if flat or len(flat) == len(d):
            lines.append(f"[{prefix}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in flat.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)

    for k, v in cfg.items():
        if isinstance(v, dict):
            table(k, v)
    for k, v in cfg.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"[[{k}]]")
                lines.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items())
    return "\n".join(lines) + "\n"


def hooks_topic(broker: DevBroker) -> str:
    """Create (idempotently) the keyless topic ``hooks`` the gateway posts webhooks to; its id."""
    seed = broker.default_mesh
    topic = broker.create_topic(seed.mesh_id, "hooks", seed.gateway.member_id, encrypted=False)
    return topic.topic_id


def two_way_config(broker: DevBroker, sink: WebhookSink, *, port: int, state_dir: Path,
                   delivery: dict[str, Any] | None = None, log_level: str = "WARNING") -> dict[str, Any]:
    """Both directions through one gateway (see the module docstring). ``delivery`` overrides
    ``[delivery]``; ``max_attempts`` is high so that a long outage retries instead of dead-lettering."""
    broker.set_rate_limit(LIFTED["rate_burst"], LIFTED["rate_per_minute"])
    # the dev broker rewrites its whole state file (every row) after a change; with thousands of
    # rows a 50 ms debounce keeps the test process's event loop busy writing JSON
    broker.config.persist_debounce_s = max(broker.config.persist_debounce_s, 1.0)
    hooks_topic(broker)
    return {
        "include": [str(Path(broker.state_dir or ".") / "meshes.toml")],
        "server": {"host": "127.0.0.1", "port": port, "state_dir": str(state_dir), "shutdown_timeout": 3.0},
        "log": {"level": log_level},
        "mesh": {"dev": {**FAST_POLL, **LIFTED}},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.5, "poll_interval": 0.5, "max_attempts": 10_000,
                     **(delivery or {})},
        "routes": [
            {"name": "m2w", "mesh": "dev", "topic": "general", "direction": "out",
             "binds": [{"gateway": "wh", "chat": "out", "options": {"url": sink.url("out")}}]},
            {"name": "w2m", "mesh": "dev", "topic": "hooks", "direction": "in",
             "binds": [{"gateway": "wh", "chat": "in", "direction": "in"}]},
        ],
    }


# -- the gateway process -----------------------------------------------------------------------------------------------
class GatewayProcess:
    """``claudemesh-gateway -c <config> run`` as a child process; its output goes to ``log_path``."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.port = int(config["server"]["port"])
        self.config_path = workdir / "gateway.toml"
        self.config_path.write_text(to_toml(config))
        self.db = Path(config["server"]["state_dir"]) / "gateway.sqlite3"
        self.log_path = workdir / "gateway.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDEMESH_")}
        self.env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.kills = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    async def start(self, *, wait_for: str = "ready", within: float = 60.0) -> None:
        """Start the process and wait until ``/-/<wait_for>`` answers 200."""
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(EXE), "-c", str(self.config_path), "run", stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log, env=self.env)
        self.starts += 1
        await self.wait_status(wait_for, 200, within=within)

    async def status(self, path: str) -> tuple[int, Any]:
        """``(status, json body)`` of ``GET /-/<path>``; ``(0, None)`` when nothing answers."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                    http.get(f"{self.base}/-/{path}") as r:
                try:
                    return r.status, await r.json(content_type=None)
                except ValueError:
                    return r.status, None
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def wait_status(self, path: str, want: int, *, within: float = 60.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"the gateway exited with {self.proc.returncode}\n{self.tail()}")
                status, body = await self.status(path)
                if status == want:
                    return body
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs; the store file is what the next start sees."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1

    async def stop(self, timeout: float = 20.0) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def outbox_ids(db: Path) -> dict[str, set[str]]:
    """lane -> message ids queued in the outbox of the store at ``db`` (read-only, any time)."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT lane, message FROM outbox").fetchall()
    finally:
        conn.close()
    out: dict[str, set[str]] = collections.defaultdict(set)
    for lane, message in rows:
        out[lane].add(json.loads(message)["id"])
    return out


# -- the sources -------------------------------------------------------------------------------------------------------
class WebhookPoster:
    """``senders`` concurrent clients posting signed webhooks ``p00000``.. to ``/gateways/wh/in``; each
    post is retried until the gateway answers 200 (acknowledged = durable in its store)."""

    def __init__(self, base: Callable[[], str], n: int, *, senders: int = 4, pause_s: float = 0.0) -> None:
        self.base = base
        self.keys = [f"p{i:05d}" for i in range(n)]
        self.senders = senders
        self.pause_s = pause_s
        self.acked: set[str] = set()
        self.refused: collections.Counter[int] = collections.Counter()  # status -> count (0: no answer)
        self.gate = asyncio.Event()
        self.gate.set()
        self._todo = collections.deque(self.keys)

    @staticmethod
    def message_id(key: str) -> str:
        return f"webhook:wh:in:{key}"

    async def _one(self, http: aiohttp.ClientSession) -> None:
        while self._todo:
            key = self._todo.popleft()
            while True:
                await self.gate.wait()
                body, headers = signed_post({"id": key, "sender": "ann", "text": f"hook {key}"}, WH_SECRET)
                try:
                    async with http.post(f"{self.base()}/gateways/wh/in", data=body, headers=headers) as r:
                        if r.status == 200:
                            self.acked.add(key)
                            break
                        self.refused[r.status] += 1
                except (aiohttp.ClientError, TimeoutError):
                    self.refused[0] += 1
                await asyncio.sleep(0.05)
            if self.pause_s:
                await asyncio.sleep(self.pause_s)

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await asyncio.gather(*(self._one(http) for _ in range(self.senders)))


class MeshPoster:
    """A mesh member (``dev_alice``) posting ``m00000``.. to topic ``general``; a post the broker did
    not take (an exception) is retried. ``gate`` pauses it (e.g. while the broker is down: a post whose ack was lost
    would otherwise be posted twice by the *source*, which is not the gateway's duplicate)."""

    def __init__(self, member: Any, n: int, *, pause_s: float = 0.0) -> None:
        self.member = member
        self.keys = [f"m{i:05d}" for i in range(n)]
        self.pause_s = pause_s
        self.acked: set[str] = set()
        self.failures: collections.Counter[str] = collections.Counter()  # exception name -> count
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self) -> None:
        for key in self.keys:
            while True:
                await self.gate.wait()
                try:
                    await self.member.wait_connected(30)
                    # returning at all means the broker queued it (None: its row id was not read back)
                    await self.member.post_topic("general", f"post {key}")
                    self.acked.add(key)
                    break
                except Exception as exc:  # noqa: BLE001 - a source retries whatever went wrong
                    self.failures[type(exc).__name__] += 1
                await asyncio.sleep(0.1)
            if self.pause_s:
                await asyncio.sleep(self.pause_s)


# -- the counts --------------------------------------------------------------------------------------------------------
@dataclass
class Lane:
    """One direction: ``arrivals()`` lists ``(outbox message id, source key)`` in arrival order at
    the sink, duplicates included; ``expected()`` the source keys that were acknowledged."""

    name: str
    arrivals: Callable[[], list[tuple[str, str]]]
    expected: Callable[[], set[str]]
    total: int  # how many the source will send in all


def two_way_lanes(broker_ref: Callable[[], DevBroker], sink: WebhookSink, mesh: MeshPoster | None,
                  hooks: WebhookPoster | None) -> list[Lane]:
    """The :data:`M2W_LANE` and :data:`W2M_LANE` lanes of :func:`two_way_config` (``broker_ref``
    returns the current broker: a restart makes a new object)."""
    lanes = []
    if mesh is not None:
        def m2w() -> list[tuple[str, str]]:
            return [(b["id"], b["text"].removeprefix("alice: post ")) for b in sink.received["out"]]
        lanes.append(Lane(M2W_LANE, m2w, lambda: set(mesh.acked), len(mesh.keys)))
    if hooks is not None:
        by_cmid = {client_message_id(f"{WebhookPoster.message_id(k)}|{W2M_LANE}|1"): k for k in hooks.keys}

        def w2m() -> list[tuple[str, str]]:
            b = broker_ref()
            gw = b.default_mesh.gateway.member_id
            out = []
            for r in b.queue_rows():
                if r.sender_member_id == gw and r.target_spec.startswith("#"):
                    key = by_cmid.get(r.client_message_id or "", "?")
                    out.append((WebhookPoster.message_id(key), key))
            return out
        lanes.append(Lane(W2M_LANE, w2m, lambda: set(hooks.acked), len(hooks.keys)))
    return lanes


@dataclass
class _Snap:
    label: str
    counts: dict[str, int]
    seen: dict[str, set[str]]
    in_flight: dict[str, set[str]]
    queued: dict[str, int]


@dataclass
class Ledger:
    """Counts per lane across faults; see the module docstring."""

    title: str
    lanes: list[Lane]
    db: Path
    snaps: list[_Snap] = field(default_factory=list)

    def arrivals(self) -> dict[str, list[tuple[str, str]]]:
        return {lane.name: lane.arrivals() for lane in self.lanes}

    def snapshot(self, label: str) -> _Snap:
        """Record the sinks and the outbox now (after a kill: exactly what the restart will see)."""
        arr = self.arrivals()
        queued = outbox_ids(self.db)
        seen = {ln: {mid for mid, _ in a} for ln, a in arr.items()}
        snap = _Snap(label, {ln: len(a) for ln, a in arr.items()}, seen,
                     {ln: queued.get(ln, set()) & seen[ln] for ln in arr},
                     {ln: len(queued.get(ln, set())) for ln in arr})
        self.snaps.append(snap)
        return snap

    def complete(self) -> bool:
        """Every acknowledged source item has arrived in every lane."""
        arr = self.arrivals()
        return all(lane.expected() <= {k for _, k in arr[lane.name]} for lane in self.lanes)

    async def flowing(self, n: int = 5, within: float = 120.0) -> None:
        """Until every lane that still has items to come has ``n`` more arrivals (a fault then lands
        while both directions are busy)."""
        before = {ln: len(a) for ln, a in self.arrivals().items()}
        total = {lane.name: lane.total for lane in self.lanes}
        try:
            async with asyncio.timeout(within):
                while any(before[ln] + n > len(a) < total[ln]  # noqa: ASYNC110
                          for ln, a in self.arrivals().items()):
                    await asyncio.sleep(0.01)
        except TimeoutError:
            now = {ln: len(a) for ln, a in self.arrivals().items()}
            raise AssertionError(f"{self.title}: stalled after {[s.label for s in self.snaps]}: arrivals "
                                 f"{before} -> {now} of {total}") from None

    def missing(self) -> dict[str, list[str]]:
        """lane -> acknowledged source keys not (yet) at the sink."""
        arr = self.arrivals()
        return {lane.name: sorted(lane.expected() - {k for _, k in arr[lane.name]}) for lane in self.lanes}

    async def wait_complete(self, within: float, *, then: float = 1.0) -> None:
        try:
            async with asyncio.timeout(within):
                while not self.complete():  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        except TimeoutError:
            gone = {ln: f"{len(m)} missing, e.g. {m[:5]}" for ln, m in self.missing().items()}
            raise AssertionError(f"{self.title}: not everything arrived within {within:.0f} s: {gone}; "
                                 f"outbox {({ln: len(v) for ln, v in outbox_ids(self.db).items()})}") from None
        await asyncio.sleep(then)  # anything still being re-sent shows up

    def figures(self) -> dict[str, dict[str, Any]]:
        arr = self.arrivals()
        out: dict[str, dict[str, Any]] = {}
        for lane in self.lanes:
            keys = [k for _, k in arr[lane.name]]
            counts = collections.Counter(keys)
            expected = lane.expected()
            per_fault = []
            for i, snap in enumerate(self.snaps):
                end = self.snaps[i + 1].counts[lane.name] if i + 1 < len(self.snaps) else len(keys)
                after = [mid for mid, _ in arr[lane.name][snap.counts[lane.name]:end]]
                per_fault.append({"label": snap.label, "in_flight": len(snap.in_flight[lane.name]),
                                  "queued": snap.queued[lane.name],
                                  "duplicates": sum(1 for m in after if m in snap.seen[lane.name])})
            out[lane.name] = {
                "sent": len(expected), "delivered": len(set(counts) & expected),
                "lost": sorted(expected - set(counts)), "duplicated": sum(c - 1 for c in counts.values()),
                "strangers": sorted(set(counts) - expected), "per_fault": per_fault,
            }
        return out

    def report(self, extra: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        figs = self.figures()
        print(f"\n{self.title} (CLAUDEMESH_FAULT_SCALE={SCALE:g})")
        for line in extra:
            print(f"  {line}")
        for lane, f in figs.items():
            print(f"  {lane}: sent {f['sent']}, delivered {f['delivered']}, lost {len(f['lost'])}, "
                  f"duplicated {f['duplicated']}")
            for p in f["per_fault"]:
                print(f"    {p['label']}: in flight {p['in_flight']} (queued {p['queued']}), "
                      f"duplicates after it {p['duplicates']}")
        return figs

    def check(self, figs: dict[str, dict[str, Any]] | None = None, *, max_in_flight: int | None = None) -> None:
        """Nothing lost, nothing unknown, every duplicate one that was in flight at the fault before it
        (and, when given, at most ``max_in_flight`` in flight per lane and fault)."""
        figs = figs or self.figures()
        for lane, f in figs.items():
            assert f["sent"] > 0, f"{self.title}: {lane}: nothing was sent"
            assert not f["lost"], f"{self.title}: {lane}: lost {len(f['lost'])}: {f['lost'][:10]}"
            assert not f["strangers"], f"{self.title}: {lane}: unknown arrivals {f['strangers'][:10]}"
            for p in f["per_fault"]:
                assert p["duplicates"] <= p["in_flight"], f"{self.title}: {lane}: {p}"
                if max_in_flight is not None:
                    assert p["in_flight"] <= max_in_flight, f"{self.title}: {lane}: {p}"
            assert f["duplicated"] == sum(p["duplicates"] for p in f["per_fault"]), \
                f"{self.title}: {lane}: duplicates not explained by a fault: {f}"


# -- the broker --------------------------------------------------------------------------------------------------------
async def restart_broker(broker: DevBroker, *, down_s: float = 0.0, clock_offset_ms: int | None = None,
                         abrupt: bool = True) -> DevBroker:
    """Stop ``broker`` (``abrupt``: every socket dropped with no close frame first, as when the broker
    process dies; its state file is kept, the broker's own durability is not what is under test),
    wait ``down_s``, and start a new broker on the same port and state directory with the same rate
    limits; ``clock_offset_ms`` sets the new broker's clock (see ``DevBrokerConfig``)."""
    port = broker.port
    burst, per_minute = broker.buckets.burst, broker.buckets.per_minute
    if abrupt:
        for conn in list(broker.conns):
            conn.terminate()
    await broker.stop()
    if down_s:
        await asyncio.sleep(down_s)
    cfg = broker.config if clock_offset_ms is None else dataclasses.replace(broker.config,
                                                                            clock_offset_ms=clock_offset_ms)
    fresh = DevBroker(broker.state_dir, host=broker.host, port=port or 0, config=cfg)
    for attempt in range(50):  # the old listening socket may linger a moment
        try:
            await fresh.start()
            break
        except OSError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)
    fresh.set_rate_limit(burst, per_minute)
    return fresh


def mount_tmpfs(path: Path, size_bytes: int) -> str | None:
    """Mount a tmpfs of ``size_bytes`` on ``path`` (created): a disk that can fill up. Returns None,
    or why it cannot be done here (not Linux, not root, no ``mount``, the mount refused)."""
    import shutil
    import subprocess

    if not sys.platform.startswith("linux"):
        return f"a size-limited tmpfs needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "mounting a size-limited tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command on this machine"
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"mount -t tmpfs refused: {(done.stderr or done.stdout).strip()[:200]}"
    return None


def unmount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill_disk(path: Path) -> int:
    """Write ``path`` until the filesystem refuses (ENOSPC); bytes written. Delete it to free the space."""
    import errno

    written = 0
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]  # fill the last block too


async def sources_done(within: float, *posters: MeshPoster | WebhookPoster,
                       tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Wait for the source tasks; on a timeout say which source still had what to send."""
    try:
        async with asyncio.timeout(within):
            await asyncio.gather(*tasks)
    except TimeoutError:
        left = {type(p).__name__: (len(p.keys) - len(p.acked), dict(getattr(p, "failures", {}) or p.refused))
                for p in posters}
        raise AssertionError(f"the sources did not finish within {within:.0f} s: (left, failures) {left}") from None


@contextlib.asynccontextmanager
async def running(*tasks: asyncio.Task[Any]):
    """Cancel ``tasks`` on the way out if they did not finish."""
    try:
        yield
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
