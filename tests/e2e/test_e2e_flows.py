"""End to end through the whole app on the dev broker: routes, tags, loops, throttling, dead letters."""

from __future__ import annotations

import asyncio

from .conftest import signed_post, wait_until


def wh(chat: str, sink, *, direction: str | None = None, url: bool = True) -> dict:
    b = {"gateway": "wh", "chat": chat}
    if url:
        b["options"] = {"url": sink.url(chat)}
    if direction:
        b["direction"] = direction
    return b


async def post_inbound(client, chat: str, payload: dict) -> dict:
    body, headers = signed_post(payload)
    resp = await client.post(f"/gateways/wh/{chat}", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_mesh_topic_post_reaches_webhook_sink_with_attribution(e2e_app, member, sink):
    _, _runtime = await e2e_app([{"name": "general", "mesh": "dev", "topic": "general", "direction": "out",
                                 "binds": [wh("out", sink)]}])
    alice = await member("dev_alice")
    await alice.post_topic("general", "deploy finished @everyone")
    await wait_until(lambda: sink.received["out"], 20, "the sink")
    (body,) = sink.received["out"]
    assert body["text"] == "alice: deploy finished @\u200beveryone"
    assert body["sender"] == "alice" and body["route"] == "general"
    assert body["origin"]["gateway"] == "mesh" and body["origin"]["chat"] == "dev:#general"
    assert sink.bad_signatures == 0


async def test_signed_inbound_webhook_reaches_topic_as_v3_and_a_peer_decrypts_it(e2e_app, member, sink, dev_broker):
    # encryption = "hkdf" is the explicit choice of v3 (the default "auto" is in test_e2e_sealed_keys.py)
    client, _runtime = await e2e_app([{"name": "general", "mesh": "dev", "topic": "general", "direction": "in",
                                      "encryption": "hkdf", "binds": [wh("ci", sink, url=False)]}])
    got = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")
    res = await post_inbound(client, "ci", {"id": "build-1", "sender": "CI", "text": "build 1 is green"})
    assert res["status"] == "queued" and res["destinations"] == 1
    await wait_until(lambda: any("build 1 is green" in i.text for i in got), 20, "bob to read the post")
    (item,) = [i for i in got if "build 1 is green" in i.text]
    assert item.text == "[via wh] CI: build 1 is green"
    assert item.body_version == 3
    stored = [t for t in dev_broker.topic_messages(topic_id=dev_broker.default_mesh.general_topic_id)
              if t.id == item.id]
    assert stored and stored[0].body_version == 3 and "green" not in stored[0].ciphertext
    # an unsigned copy is refused and never reaches the mesh
    resp = await client.post("/gateways/wh/ci", json={"sender": "x", "text": "forged"})
    assert resp.status == 401


async def test_tag_route_delivers_to_two_destinations(e2e_app, sink):
    client, _runtime = await e2e_app([
        {"name": "intake", "binds": [wh("in", sink, direction="in"), wh("log", sink, direction="out")]},
        {"name": "ops", "tags": ["ops"], "binds": [wh("ops-a", sink, direction="out"),
                                                   wh("ops-b", sink, direction="out")]},
    ])
    await post_inbound(client, "in", {"id": "1", "sender": "ann", "text": "tag:ops disk 91% full"})
    await post_inbound(client, "in", {"id": "2", "sender": "ann", "text": "just chatting"})
    await wait_until(lambda: len(sink.received["log"]) == 2 and sink.received["ops-a"] and sink.received["ops-b"],
                     20, "deliveries")
    assert sink.texts("ops-a") == ["ann: disk 91% full"] == sink.texts("ops-b")
    assert sink.received["ops-a"][0]["tags"] == ["ops"]
    assert sink.texts("log") == ["ann: disk 91% full", "ann: just chatting"]  # tag stripped everywhere


async def test_tag_destination_reaches_exactly_the_tagged_peers(e2e_app, member, sink):
    dms: dict[str, list] = {"alice": [], "bob": []}
    await member("dev_alice", on_message=dms["alice"].append, groups=("oncall",))
    await member("dev_bob", on_message=dms["bob"].append)
    client, runtime = await e2e_app([
        {"name": "page", "tags": ["oncall"],
         "binds": [wh("pager", sink, direction="in"), {"gateway": "mesh", "chat": "dev:tag:oncall",
                                                       "direction": "out"}]},
    ])
    peers = await runtime.meshes["dev"].peers(refresh=True)
    assert any(p.display_name == "alice" and "oncall" in p.tags() for p in peers)
    await post_inbound(client, "pager", {"id": "p1", "sender": "monitor", "text": "tag:oncall db down"})
    await wait_until(lambda: dms["alice"], 20, "alice's DM")
    await asyncio.sleep(1.0)  # give a wrong DM to bob time to arrive
    assert [d.text for d in dms["alice"]] == ["[via wh] monitor: db down"]
    assert dms["alice"][0].kind == "dm"
    assert dms["bob"] == []


async def test_a_ring_of_routes_delivers_each_message_once_per_destination(e2e_app, member, sink, dev_broker):
    seed = dev_broker.default_mesh
    for name in ("ring1",):
        dev_broker.create_topic(seed.mesh.mesh_id, name, seed.gateway.member_id)
        dev_broker.join_topic(seed.mesh.mesh_id, name, seed.bob.member_id)
    # general -> ring1 (and a sink), ring1 -> general (and a sink): a loop through the gateway itself
    _client, _runtime = await e2e_app([
        {"name": "g-to-r", "mesh": "dev", "topic": "general", "direction": "out",
         "binds": [{"gateway": "mesh", "chat": "dev:#ring1"}, wh("seen-general", sink)]},
        {"name": "r-to-g", "mesh": "dev", "topic": "ring1", "direction": "out",
         "binds": [{"gateway": "mesh", "chat": "dev:#general"}, wh("seen-ring1", sink)]},
    ])
    # bob is a naive upstream-style bridge: copies ring1 back into general, bumping the hop prefix
    from claudemesh_gateway.routing.text import parse_hop_prefix

    async def bridge(item):
        hop, text = parse_hop_prefix(item.text)
        await bob.post_topic("general", f"__cmh{hop + 1}:{text}")

    bob = await member("dev_bob", on_message=bridge)
    await bob.watch_topic("ring1")
    alice = await member("dev_alice")
    await alice.post_topic("general", "is this a loop?")
    await wait_until(lambda: len(sink.received["seen-general"]) >= 2, 25, "the bridged copy")
    await asyncio.sleep(2.0)  # anything still looping would show up now
    general = sink.texts("seen-general")
    assert general == ["alice: is this a loop?", "bob: alice: is this a loop?"]
    # the gateway's own post into ring1 is an echo for it: ring1 -> general never fires for it
    assert sink.texts("seen-ring1") == []
    ring1 = [t for t in dev_broker.topic_messages(topic_id=dev_broker.topic_id(seed.mesh.mesh_id, "ring1"))]
    assert len(ring1) == 1  # bob's hop-2 copy was not relayed again (hop limit 2)
    general_rows = dev_broker.topic_messages(topic_id=seed.general_topic_id)
    assert len(general_rows) == 2  # alice's post and bob's copy; the gateway added nothing


async def test_retry_after_for_one_chat_slows_only_that_chat(e2e_app, sink):
    sink.script["slow"] = lambda body, n: (429, {"Retry-After": "4"}) if n == 1 else (200, {})
    client, _runtime = await e2e_app([
        {"name": "fan", "binds": [wh("src", sink, direction="in"), wh("slow", sink, direction="out"),
                                  wh("fast", sink, direction="out")]},
    ])
    for i in range(5):
        await post_inbound(client, "src", {"id": str(i), "sender": "ann", "text": f"m{i}"})
    await wait_until(lambda: len(sink.received["slow"]) == 5, 30, "the throttled chat to catch up")
    assert sink.texts("fast") == [f"ann: m{i}" for i in range(5)]
    assert sink.texts("slow") == [f"ann: m{i}" for i in range(5)]  # in order, none lost
    first_slow_ok = next(i for i, e in enumerate(sink.events) if e[0] == "slow" and e[2] == 200)
    fast_done = max(i for i, e in enumerate(sink.events) if e[0] == "fast")
    assert fast_done < first_slow_ok  # the fast chat finished while the slow one waited
    assert [e[2] for e in sink.events if e[0] == "slow"] == [429, 200, 200, 200, 200, 200]


async def test_always_failing_sink_goes_to_dead_letters_and_dlq_retry_delivers(e2e_app, sink, tmp_path):
    broken = {"on": True}
    sink.script["down"] = lambda body, n: (500, {}) if broken["on"] else (200, {})
    client, runtime = await e2e_app(
        [{"name": "alerts", "binds": [wh("src", sink, direction="in"), wh("down", sink, direction="out")]}],
        delivery={"max_attempts": 3},
    )
    for i in range(2):
        await post_inbound(client, "src", {"id": f"a{i}", "sender": "ann", "text": f"alert {i}"})
    store = runtime.store

    async def dead() -> int:
        return await store.dlq_count()

    async with asyncio.timeout(30):
        while await dead() < 2:  # noqa: ASYNC110 (the count lives in the store)
            await asyncio.sleep(0.1)
    letters = await store.dlq_list()
    assert {dl.item.message["id"] for dl in letters} == {"webhook:wh:src:a0", "webhook:wh:src:a1"}
    assert all("HTTP 500" in dl.reason and "gave up after 3 attempts" in dl.reason for dl in letters)
    assert sink.received["down"] == []
    # the sink recovers; the operator runs `claudemesh-gateway dlq retry --all` (another process)
    broken["on"] = False
    cfg = tmp_path / "dlq.toml"
    state_dir = runtime.settings.server.state_dir
    cfg.write_text(f"[server]\nstate_dir = {str(state_dir)!r}\n")
    from claudemesh_gateway.cli import main

    assert await asyncio.to_thread(main, ["-c", str(cfg), "dlq", "retry", "--all"]) == 0
    await wait_until(lambda: len(sink.received["down"]) == 2, 20, "redelivery after dlq retry")
    assert sorted(sink.texts("down")) == ["ann: alert 0", "ann: alert 1"]
    await asyncio.sleep(1.0)
    assert len(sink.received["down"]) == 2  # delivered once each
    assert await store.dlq_count() == 0
    assert sink.bad_signatures == 0  # the sink verified every signature


async def test_route_encryption_plaintext_reaches_the_broker_as_body_version_1(e2e_app, member, sink, dev_broker):
    client, runtime = await e2e_app([{"name": "lobby", "mesh": "dev", "topic": "general", "direction": "in",
                                      "encryption": "plaintext", "binds": [wh("ci", sink, url=False)]}])
    assert runtime.routes.encryption_for("dev", "general") == "plaintext"
    got = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")
    await post_inbound(client, "ci", {"id": "p1", "sender": "CI", "text": "readable by all"})
    await wait_until(lambda: any("readable by all" in i.text for i in got), 20, "bob to read the post")
    (item,) = [i for i in got if "readable by all" in i.text]
    assert item.body_version == 1


async def test_in_chat_commands_are_answered_in_the_chat(e2e_app, member, sink):
    await member("dev_alice")
    client, _runtime = await e2e_app([{"name": "general", "mesh": "dev", "topic": "general",
                                      "binds": [wh("team", sink)]}])
    await post_inbound(client, "team", {"id": "c1", "sender": "ann", "text": "/peers"})
    await post_inbound(client, "team", {"id": "c2", "sender": "ann", "text": "/topics"})
    await wait_until(lambda: len(sink.received["team"]) == 2, 20, "the command replies")
    peers, topics = sink.texts("team")
    assert peers.startswith("dev: ") and "alice" in peers
    assert "general: dev:#general (both)" in topics
    assert all(b["sender"] == "claudemesh-gateway" for b in sink.received["team"])
    assert [b["reply_to"] for b in sink.received["team"]] == ["c1", "c2"]  # answers the command
