"""Several replicas of the whole app on one PostgreSQL store and the dev broker (in one process):
one replica polls each topic, a lane is delivered by one replica at a time, webhooks may land on any
replica, every message arrives once and in order, and /-/health names the leases each one holds."""

from __future__ import annotations

import asyncio
import os

from .conftest import SECRET, signed_post, wait_until

N_TOPIC = int(os.environ.get("CLAUDEMESH_REPLICA_TEST_TOPIC", "10"))  # per poster (alice, bob): within their burst
N_WEBHOOK = int(os.environ.get("CLAUDEMESH_REPLICA_TEST_WEBHOOK", "60"))


def routes(sink) -> list[dict]:
    return [
        {"name": "general", "mesh": "dev", "topic": "general", "direction": "out",
         "binds": [{"gateway": "wh", "chat": "out", "options": {"url": sink.url("out")}}]},
        {"name": "intake", "binds": [
            {"gateway": "wh", "chat": "ci", "direction": "in"},
            {"gateway": "wh", "chat": "log", "direction": "out", "options": {"url": sink.url("log")}}]},
    ]


async def test_three_replicas_share_one_postgres(e2e_app, member, sink, pg_schema_dsn) -> None:
    store = {"backend": "postgres", "dsn": pg_schema_dsn, "lease_ttl": 3.0}
    reps = []
    for i in range(3):
        client, runtime = await e2e_app(routes(sink), store={**store, "replica_id": f"r{i}"})
        reps.append((client, runtime))
    # each replica is its own presence of the member: three session identities
    sessions = {rt.meshes["dev"].session_id for _c, rt in reps}
    assert len(sessions) == 3
    # exactly one replica polls #general; the others stand by
    await wait_until(lambda: sum(not p.standby and p.polls > 0 for _c, rt in reps
                                 for p in rt.meshes["dev"].pollers.values()) == 1, 20, "one topic owner")
    posters = {"alice": await member("dev_alice"), "bob": await member("dev_bob")}

    async def post_webhooks(k: int, client) -> None:  # a signed stream to every replica
        for j in range(N_WEBHOOK // 3):
            body, headers = signed_post({"id": f"w{k}-{j}", "sender": f"ci{k}", "text": f"r{k} {j:04d}"}, SECRET)
            resp = await client.post("/gateways/wh/ci", data=body, headers=headers)
            assert resp.status == 200, await resp.text()

    async def post_topic(who: str) -> None:
        for j in range(N_TOPIC):
            await posters[who].post_topic("general", f"topic {j:04d}")

    await asyncio.gather(*(post_topic(w) for w in posters), *(post_webhooks(k, c) for k, (c, _rt) in enumerate(reps)))
    total_webhooks = 3 * (N_WEBHOOK // 3)
    await wait_until(lambda: len(sink.received["out"]) >= 2 * N_TOPIC and len(sink.received["log"]) >= total_webhooks,
                     90, "every message at the sink")
    await asyncio.sleep(1.0)  # a duplicate would show up now
    topic_texts = sink.texts("out")
    assert len(topic_texts) == 2 * N_TOPIC
    for who in posters:  # once each, in the order posted
        assert [t for t in topic_texts if t.startswith(f"{who}: ")] == [f"{who}: topic {j:04d}" for j in range(N_TOPIC)]
    log = sink.texts("log")
    assert len(log) == total_webhooks == len(set(log))
    for k in range(3):  # each replica's stream in the order it was accepted
        mine = [t for t in log if t.startswith(f"ci{k}: ")]
        assert mine == [f"ci{k}: r{k} {j:04d}" for j in range(N_WEBHOOK // 3)]
    assert sink.bad_signatures == 0
    # /-/health shows the leases each replica holds; one of them holds the topic poller's
    holders = []
    for client, _rt in reps:
        health = await (await client.get("/-/health")).json()
        assert health["replica"]["shared"] is True
        holders += [n for n in health["replica"]["leases"] if n.startswith("topic:dev:")]
    assert len(holders) == 1
    for client, _rt in reps:
        ready = await (await client.get("/-/ready")).json()
        assert ready["ready"], ready


async def test_three_replicas_share_the_members_rate_limit(e2e_app, sink, pg_schema_dsn, dev_broker) -> None:
    """60 mesh-bound messages over three lanes (three topics) delivered by three replicas of one
    member: the broker's per-member bucket (burst 10) is one bucket in the database, so together
    they provoke no rate_limit ack. (Three local buckets would send 30 at once and have 20 refused.)"""
    dev_broker.set_rate_limit(10, 600)  # 10/s, so the test takes seconds, not a minute
    seed = dev_broker.default_mesh
    topics = ["general", "rl-two", "rl-three"]
    for name in topics[1:]:
        dev_broker.create_topic(seed.mesh.mesh_id, name, seed.alice.member_id)
    mesh = {"rate_burst": 10, "rate_per_minute": 600}
    # the topics alice creates get broker-sealed keys only she holds: hkdf keeps this test about rate limits
    route = [{"name": f"to-{t}", "mesh": "dev", "topic": t, "direction": "in", "encryption": "hkdf",
              "binds": [{"gateway": "wh", "chat": f"ci{k}"}]} for k, t in enumerate(topics)]
    store = {"backend": "postgres", "dsn": pg_schema_dsn, "lease_ttl": 3.0}
    reps = [await e2e_app(route, mesh=mesh, store={**store, "replica_id": f"r{i}"}) for i in range(3)]

    for k, (_c, rt) in enumerate(reps):  # spread the lanes: replica k delivers topic k
        assert await rt.leases.hold(f"lane:mesh/dev:#{topics[k]}")

    def posted() -> int:
        return sum(1 for m in dev_broker.topic_messages(mesh_id=seed.mesh.mesh_id) if m.sender_member_id == seed.gateway.member_id)

    async def burst(k: int, client) -> None:  # replica k takes the stream for topic k
        for j in range(20):
            body, headers = signed_post({"id": f"b{k}-{j}", "sender": "ci", "text": f"burst {k} {j}"}, SECRET)
            resp = await client.post(f"/gateways/wh/ci{k}", data=body, headers=headers)
            assert resp.status == 200, await resp.text()

    await asyncio.gather(*(burst(k, c) for k, (c, _rt) in enumerate(reps)))
    await wait_until(lambda: posted() >= 60, 60, "60 posts from the gateway member")
    sent = [rt.meshes["dev"].sender.sent for _c, rt in reps]
    assert sent == [20, 20, 20]  # each replica sent its lane
    assert [rt.meshes["dev"].sender.rate_limited for _c, rt in reps] == [0, 0, 0]
