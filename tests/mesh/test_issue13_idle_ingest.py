"""Issue 13, first bullet: ingest of a post in an idle topic within a fixed per-mesh poll budget.

Quiet topics are polled every ``topic_poll_idle_interval`` (1.5 s), stretched so the mesh's topics
never need more than ``topic_poll_budget`` topic_history requests/s together; every request of the
pollers takes a token of that budget; and a drained ``#topic`` row (the broker hands each topic post
to one member on its next drain, spec B.34) wakes that topic's poller at once. Speed is measured in
bench/bench_idle_ingest.py; these tests check the mechanisms, not timings.
"""

from __future__ import annotations

import base64
import types
from typing import Any

from claudemesh_gateway.keys import KeyRing
from claudemesh_gateway.mesh import MemoryKV, MeshConfig
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.mesh.poller import TopicPoller
from claudemesh_gateway.mesh.types import Topic

NEVER = 600.0  # a poll interval no test waits for


async def test_a_drained_topic_row_wakes_that_topics_poller(broker, make_peer, new_inbox, eventually):
    """The gateway's pollers would not poll again for 10 minutes; a DM to the gateway makes the broker
    drain the gateway's rows, the topic post among them, and that wakes the topic's poller."""
    broker.set_rate_limit(1000, 600_000)
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox, topic_poll_interval=NEVER, topic_poll_idle_interval=NEVER)
    alice = await make_peer(seed.alice)
    poller = await gw.watch_topic("general")
    await eventually(lambda: poller.initialized and poller.polls == 1)
    await alice.post_topic("general", "in an idle topic")
    assert poller.polls == 1 and inbox.items == []
    await alice.send_dm(gw.session_pubkey, "a DM: the broker drains the gateway's rows")  # a drain trigger
    await eventually(lambda: "in an idle topic" in inbox.texts, timeout=20)
    assert poller.polls == 2
    assert gw.pushes.dropped["topic_row"] == 1  # the drained copy itself was acked and dropped


class Bucket:
    def __init__(self) -> None:
        self.taken = 0

    async def acquire(self) -> float:
        self.taken += 1
        return 0.0


class History:
    def __init__(self, n: int) -> None:
        self.rows = [{"id": f"r{i:04d}", "createdAt": 1_700_000_000_000 + i, "senderPubkey": "c" * 64,
                      "senderMemberId": "other", "senderName": "carol", "nonce": "",
                      "ciphertext": base64.b64encode(f"row {i}".encode()).decode(), "bodyVersion": 1}
                     for i in range(n)]
        self.requests = 0

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        rows = sorted(self.rows, key=lambda r: (r["createdAt"], r["id"]), reverse=True)
        if "beforeId" in frame:
            anchor = next(r for r in rows if r["id"] == frame["beforeId"])
            rows = [r for r in rows if r["createdAt"] < anchor["createdAt"]]
        return {"messages": rows[: frame["limit"]]}


def _poller(history: History, n_topics: int = 1, **cfg: Any) -> tuple[TopicPoller, Bucket]:
    config = MeshConfig(broker_url="ws://127.0.0.1:1/ws", mesh_id="M" * 32, member_id="me",
                        secret_key=KeyPair.generate().secret_hex, root_key="k" * 43, **cfg)
    bucket = Bucket()
    peer = types.SimpleNamespace(name="fake", cfg=config, kv=MemoryKV(), keyring=KeyRing.from_configs({"fake": config}),
                                 own_keys=frozenset({config.member_pubkey}), connection=history,
                                 poll_bucket=bucket, pollers={f"t{i}": None for i in range(n_topics)})

    async def on_row(item: Any) -> None:
        return None

    poller = TopicPoller(peer, Topic(id="T" * 32, name="t"), on_row)
    poller.watch_started_ms = 0  # every row counts as posted after the watch: the first run reads a backlog
    return poller, bucket


async def test_every_topic_history_request_takes_a_token_of_the_mesh_budget():
    history = History(450)
    poller, bucket = _poller(history)
    assert await poller.poll_once() == 200  # the first run reads one page of 200 (rows after the watch)
    assert bucket.taken == history.requests == 1
    history.rows += [{**r, "id": f"new-{r['id']}", "createdAt": r["createdAt"] + 10_000}
                     for r in History(120).rows]
    assert await poller.poll_once() == 120  # a backlog: the top page (50), then pages of 200
    assert bucket.taken == history.requests == 3


def test_quiet_topics_share_the_budget():
    poller, _ = _poller(History(0), n_topics=3)
    assert poller.idle_interval() == 1.5  # 3 topics at 1.5 s: 2 requests/s, inside 10/s
    many, _ = _poller(History(0), n_topics=40)
    assert many.idle_interval() == 4.0  # 40 topics within 10 requests/s: each every 4 s
    tight, _ = _poller(History(0), n_topics=40, topic_poll_budget=40.0)
    assert tight.idle_interval() == 1.5
