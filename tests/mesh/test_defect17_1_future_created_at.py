"""Issue 17 item 1: a future ``createdAt`` blinds a topic (silent loss).

The poller used to keep ``high_water = max(createdAt)`` and take every unseen row older than
``high_water - 2 s`` for an old one, silently. Now a row is new iff its id is not in the window
of ids read last time and it sits above the window's bottom; timestamps decide nothing
(core/mesh/poller.py docstring). These tests step the dev broker's clock
(``DevBrokerConfig.clock_offset_ms``) or script a fake ``topic_history``.
"""

from __future__ import annotations

import base64
import logging
import time
import types
from datetime import UTC, datetime
from typing import Any

from claudemesh_gateway.devbroker import DevBroker, DevBrokerConfig
from claudemesh_gateway.keys import KeyRing
from claudemesh_gateway.mesh import MemoryKV, MeshConfig
from claudemesh_gateway.mesh import poller as poller_mod
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.mesh.poller import TopicPoller
from claudemesh_gateway.mesh.types import Topic
from claudemesh_gateway.web.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families

UNLIMITED = {"rate_burst": 1000, "rate_per_minute": 600_000}


async def _restart(broker: DevBroker, offset_ms: int = 0) -> DevBroker:
    """Stop ``broker`` and start a new one on the same state and port, its clock off by ``offset_ms``."""
    port = broker.port
    await broker.stop()
    fresh = DevBroker(broker.state_dir, port=port or 0,
                      config=DevBrokerConfig(grace_s=5.0, claim_s=1.0, sweep_interval_s=0.5,
                                             persist_debounce_s=0.01, clock_offset_ms=offset_ms))
    await fresh.start()
    fresh.set_rate_limit(1000, 600_000)
    return fresh


async def test_a_post_from_a_fast_clock_then_a_restart_with_the_right_clock_loses_nothing(
        broker, make_peer, new_inbox, eventually):
    """The issue's case: one post while the broker's clock ran 50 s fast, the broker restarted with
    the right clock, then 5 posts (0 of which were delivered), also across a gateway restart."""
    broker.set_rate_limit(1000, 600_000)
    seed = broker.default_mesh
    kv, inbox = MemoryKV(), new_inbox()
    gw = await make_peer(seed.gateway, kv=kv, on_message=inbox)
    alice = await make_peer(seed.alice, **UNLIMITED)
    await gw.watch_topic("general")
    await alice.post_topic("general", "on time")
    await inbox.wait(1)
    broker.config.clock_offset_ms = 50_000
    await alice.post_topic("general", "from the fast clock")
    await inbox.wait(2)
    broker2 = await _restart(broker)
    try:
        await alice.wait_connected(10)
        for i in range(5):
            await alice.post_topic("general", f"after the restart {i}")
        await inbox.wait(7)
        # a gateway restart with the persisted window: later posts still arrive, nothing twice
        await gw.stop()
        gw2 = await make_peer(seed.gateway, kv=kv, on_message=inbox)
        await gw2.watch_topic("general")
        for i in range(2):
            await alice.post_topic("general", f"after the gateway restart {i}")
        await inbox.wait(9)
        polls = gw2.pollers["general"].polls
        await eventually(lambda: gw2.pollers["general"].polls >= polls + 3)
        assert inbox.texts == ["on time", "from the fast clock", *[f"after the restart {i}" for i in range(5)],
                               *[f"after the gateway restart {i}" for i in range(2)]]
        assert gw2.pollers["general"].skipped == {}
    finally:
        await broker2.stop()


async def test_a_row_dated_2100_does_not_blind_the_topic(broker, make_peer, new_inbox, eventually):
    broker.set_rate_limit(1000, 600_000)
    seed = broker.default_mesh
    kv, inbox = MemoryKV(), new_inbox()
    gw = await make_peer(seed.gateway, kv=kv, on_message=inbox)
    alice = await make_peer(seed.alice, **UNLIMITED)
    await gw.watch_topic("general")
    year_2100 = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
    broker.config.clock_offset_ms = year_2100 - int(time.time() * 1000)
    await alice.post_topic("general", "from 2100")
    await inbox.wait(1)
    broker.config.clock_offset_ms = 0
    for i in range(5):
        await alice.post_topic("general", f"today {i}")
    await inbox.wait(6)
    await gw.stop()
    gw2 = await make_peer(seed.gateway, kv=kv, on_message=inbox)
    await gw2.watch_topic("general")
    await alice.post_topic("general", "after the gateway restart")
    await inbox.wait(7)
    polls = gw2.pollers["general"].polls
    await eventually(lambda: gw2.pollers["general"].polls >= polls + 3)
    assert inbox.texts == ["from 2100", *[f"today {i}" for i in range(5)], "after the gateway restart"]
    assert datetime.fromtimestamp(inbox.items[0].created_at / 1000, UTC).year == 2100  # the broker's value, kept


# -- a scripted topic_history (strict-< beforeId, newest first) --------------------------------------------------------
class History:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.state = "connected"

    def add(self, texts: list[str], t0: int, step: int = 1000) -> list[str]:
        for k, text in enumerate(texts):
            self.rows.append({"id": f"id-{text}", "createdAt": t0 + k * step, "senderPubkey": "c" * 64,
                              "senderMemberId": "other", "senderName": "carol", "nonce": "",
                              "ciphertext": base64.b64encode(text.encode()).decode(), "bodyVersion": 1})
        return texts

    async def wait_connected(self, timeout: float | None = None) -> None:
        return None

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(frame)
        rows = sorted(self.rows, key=lambda r: (r["createdAt"], r["id"]), reverse=True)
        if "beforeId" in frame:
            anchor = next((r for r in rows if r["id"] == frame["beforeId"]), None)
            rows = [] if anchor is None else [r for r in rows if r["createdAt"] < anchor["createdAt"]]
        return {"type": "topic_history_response", "messages": rows[: frame["limit"]]}


def _peer(history: History, kv: Any, **cfg: Any) -> Any:
    config = MeshConfig(broker_url="ws://127.0.0.1:1/ws", mesh_id="M" * 32, member_id="me",
                        secret_key=KeyPair.generate().secret_hex, root_key="k" * 43, **cfg)
    return types.SimpleNamespace(name="fake", cfg=config, kv=kv, keyring=KeyRing.from_configs({"fake": config}),
                                 own_keys=frozenset({config.member_pubkey}), connection=history)


def _poller(history: History, kv: Any, got: list[str], **cfg: Any) -> TopicPoller:
    async def on_row(item: Any) -> None:
        got.append(item.text)

    p = TopicPoller(_peer(history, kv, **cfg), Topic(id="T" * 32, name="t"), on_row)
    p.watch_started_ms = 10**15  # nothing counts as "posted after the watch"
    p.clock = lambda: NOW / 1000 + 3600  # rows are dated before our clock unless a test says otherwise
    return p


NOW = 1_800_000_000_000


async def test_rows_posted_under_a_page_of_future_dated_rows_are_found():
    """More future-dated rows than a page sit on top; rows posted once the clock is right sort
    below all of them. The poller reads past a full page of seen rows dated in its future."""
    hist, kv, got = History(), MemoryKV(), []
    hist.add([f"old {i}" for i in range(3)], NOW - 60_000)
    poller = _poller(hist, kv, got, topic_page_size=5)
    poller.clock = lambda: NOW / 1000
    assert await poller.poll_once() == 0
    fast = hist.add([f"fast {i}" for i in range(8)], NOW + 50_000)
    assert await poller.poll_once() == 8
    right = hist.add([f"right {i}" for i in range(3)], NOW + 1_000)
    assert await poller.poll_once() == 3
    assert got == fast + right
    # a restart from the persisted window: nothing again, and later posts still arrive
    again = _poller(hist, kv, got, topic_page_size=5)
    again.clock = lambda: NOW / 1000 + 5
    assert await again.poll_once() == 0
    later = hist.add(["later"], NOW + 6_000)
    assert await again.poll_once() == 1
    assert got == fast + right + later


async def test_a_clock_stepped_back_inside_the_first_page_loses_nothing():
    """The broker's clock stepped back 30 s below the newest rows: new rows sort under seen ones."""
    hist, kv, got = History(), MemoryKV(), []
    hist.add([f"old {i}" for i in range(10)], NOW - 100_000, step=10_000)  # ... NOW - 10 s
    poller = _poller(hist, kv, got)
    assert await poller.poll_once() == 0
    back = hist.add([f"back {i}" for i in range(4)], NOW - 40_000, step=100)
    assert await poller.poll_once() == 4
    assert got == back and poller.skipped == {}


async def test_a_backlog_after_the_first_run_is_delivered_and_nothing_older_is_touched():
    """The first run keeps a window one backfill page deep, so a later backlog read stops inside it:
    the 60 new rows arrive, the 300 older ones are neither delivered nor reported as skipped."""
    hist, kv, got = History(), MemoryKV(), []
    hist.add([f"old {i}" for i in range(300)], NOW - 400_000)
    poller = _poller(hist, kv, got)
    assert await poller.poll_once() == 0
    backlog = hist.add([f"new {i}" for i in range(60)], NOW)  # the gateway was down
    assert await poller.poll_once() == 60
    assert got == backlog and poller.skipped == {}
    assert await poller.poll_once() == 0


async def test_rows_evicted_from_the_window_are_never_delivered_again_and_are_logged_and_counted(
        monkeypatch, caplog):
    """The window (SEEN_LIMIT ids) forgets its oldest ids. A clock stepped back puts one new row at
    the end of each page, so the read goes on down to the window's bottom and past it: the rows
    inside the window are delivered; the forgotten ones below it are not delivered again, but
    recorded, logged (one line) and counted, also as a Prometheus counter."""
    monkeypatch.setattr(poller_mod, "SEEN_LIMIT", 30)
    monkeypatch.setattr(poller_mod, "MAX_PAGE", 12)
    hist, kv, got = History(), MemoryKV(), []
    poller = _poller(hist, kv, got, topic_page_size=5)
    assert await poller.poll_once() == 0
    posted: list[str] = []
    for batch in range(6):  # row j (0..59) is dated NOW + j s
        posted += hist.add([f"r{batch * 10 + i}" for i in range(10)], NOW + batch * 10_000)
        assert await poller.poll_once() == 10
    assert got == posted and len(poller.seen) == 30  # r0..r29 were forgotten
    # each lands at the end of a page (5, then 12 with one row of overlap): r55/r56, r45/r46, r35/r36
    inside = []
    for j in (55, 45, 35):
        inside += hist.add([f"back {j}"], NOW + j * 1000 + 500)
    with caplog.at_level(logging.INFO, logger="claudemesh_gateway.mesh.poller"):
        assert await poller.poll_once() == 3
    assert got == posted + inside[::-1]  # oldest first
    assert poller.skipped == {"beyond_window": 5}  # r29..r25 shared the last page with the bottom (r30)
    lines = [r for r in caplog.records if "below the rows already seen" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "5 unseen row(s)" in lines[0].getMessage()
    assert await poller.poll_once() == 0 and got == posted + inside[::-1]

    runtime = _metrics_runtime({"t": _stats(poller)})
    metrics = Metrics()
    await metrics.refresh(runtime)
    await metrics.refresh(runtime)  # a second scrape adds nothing
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    samples = {s.labels["reason"]: s.value for s in families["claudemesh_gateway_mesh_topic_rows_skipped"].samples
               if s.name.endswith("_total")}
    assert samples == {"beyond_window": 5.0, "backfill_cap": 0.0}


def _stats(poller: TopicPoller) -> dict[str, Any]:
    return {"last_poll_at": time.time(), "poll_latency": 0.01, "polls": poller.polls,
            "skipped": dict(poller.skipped), "bad_timestamps": poller.bad_timestamps}


def _metrics_runtime(stats: dict[str, Any]) -> Any:
    class Store:
        async def outbox_depths(self) -> dict[str, Any]:
            return {}

        async def dlq_count(self) -> int:
            return 0

    peer = types.SimpleNamespace(reconnects=0, poll_stats=lambda: stats)
    return types.SimpleNamespace(store=Store(), delivery=types.SimpleNamespace(stats=dict), states={},
                                 meshes={"fake": peer})


async def test_a_window_saved_by_the_old_poller_is_upgraded_and_recovers_the_rows_it_hid():
    """State written by the timestamp-cursor poller (ids in marking order plus a high_water that a
    row dated 2100 pushed up): the first poll after the upgrade delivers the rows it had hidden,
    nothing it had delivered, and saves the new ordered format."""
    hist, kv, got = History(), MemoryKV(), []
    old = hist.add([f"old {i}" for i in range(80)], NOW - 100_000)
    future = hist.add(["from 2100"], 4_102_444_800_000)
    hidden = hist.add([f"hidden {i}" for i in range(4)], NOW)  # never delivered: "older than high_water"
    key = "fake:topic:" + "T" * 32
    await kv.kv_set("mesh", key, {"seen": [f"id-{t}" for t in old[30:] + future], "high_water": 4_102_444_800_000,
                                  "initialized": True, "topic": "t"})
    poller = _poller(hist, kv, got)
    assert await poller.poll_once() == 4
    assert got == hidden and poller.skipped == {}
    saved = await kv.kv_get("mesh", key)
    assert saved["v"] == 2 and saved["seen"][:6] == ["id-from 2100", *[f"id-hidden {i}" for i in range(3, -1, -1)],
                                                      "id-old 79"]
    assert await poller.poll_once() == 0
    later = hist.add(["later"], NOW + 1_000)
    again = _poller(hist, kv, got)
    assert await again.poll_once() == 1 and got == hidden + later
