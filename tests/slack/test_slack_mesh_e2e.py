"""End to end with the dev broker: mesh topic <-> Slack channel through the whole gateway app.

The gateway connects as member "gateway" of the seeded mesh "dev"; alice and bob are two more
mesh peers (their own MeshPeer connections) that post to and read from topic "general".
"""

from __future__ import annotations

import asyncio

import pytest
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, MeshInbound, MeshPeer
from claudemesh_gateway.testing import build_test_app, dev_broker, dev_mesh_tables, wait_until  # noqa: F401 (fixture)


@pytest.fixture
async def mesh_app(tmp_path, dev_broker, fake_slack, sk):  # noqa: F811
    """Start the gateway app (Slack socket mode -> fake Slack; route dev#general <-> channels)
    plus alice/bob mesh peers. Returns a namespace; everything is stopped at teardown."""
    import types

    started: list = []
    clients: list = []
    tables = dev_mesh_tables(dev_broker.state_dir)

    async def peer(name: str, inbox: list[MeshInbound] | None = None) -> MeshPeer:
        cfg = MeshConfig.model_validate(
            {**tables[name], "topic_poll_interval": 0.2, "topic_poll_idle_interval": 0.5}
        )

        async def on_message(item: MeshInbound) -> None:
            if inbox is not None:
                inbox.append(item)

        p = MeshPeer(name, cfg, kv=MemoryKV(), on_message=on_message, identity="cli")
        await p.start()
        started.append(p)
        await p.wait_connected(10)
        return p

    async def make(channels=("C1",), **gw_extra):
        for c in channels:
            fake_slack.channels.setdefault(c, {"id": c, "name": c.lower()})
        mesh_tables = {name: dict(t) for name, t in tables.items()}
        mesh_tables["dev"].update({"topic_poll_interval": 0.2, "topic_poll_idle_interval": 0.5})
        cfg = {
            "mesh": mesh_tables,
            "gateways": {
                "slack": {
                    "type": "slack",
                    "bot_token": sk.BOT_TOKEN,
                    "app_token": sk.APP_TOKEN,
                    "api_base": f"{fake_slack.url}/api/",
                    **gw_extra,
                }
            },
            "routes": [
                {
                    "name": "general",
                    "mesh": "dev",
                    "topic": "general",
                    "encryption": "hkdf",  # v3, chosen explicitly (the default auto posts v1 here)
                    "binds": [{"gateway": "slack", "chat": c} for c in channels],
                }
            ],
        }
        state = tmp_path / f"gw{len(clients)}"
        state.mkdir()
        client, runtime = await build_test_app(cfg, state_dir=state)
        clients.append(client)
        await fake_slack.wait_socket()
        gw_peer = runtime.meshes["dev"]
        await wait_until(lambda: gw_peer.last_poll_at.get("general") is not None)  # watching from now on
        return client, runtime

    ns = types.SimpleNamespace(make=make, peer=peer, broker=dev_broker, seed=dev_broker.default_mesh)
    yield ns
    for c in reversed(clients):
        await c.close()
    for p in reversed(started):
        await p.stop()


async def test_mesh_post_reaches_channel_with_attribution(mesh_app, fake_slack):
    await mesh_app.make()
    alice = await mesh_app.peer("dev_alice")
    await alice.post_topic("general", "deploy finished <!channel> & @here")
    [post] = await fake_slack.wait_posts("C1", 1)
    assert post["text"].startswith("alice: deploy finished ")
    assert "<" not in post["text"] and "@here" not in post["text"]  # no live mass mention in Slack
    assert "&amp;" in post["text"]


async def test_channel_message_reaches_topic_encrypted_v3_for_other_peers(mesh_app, fake_slack, sk):
    await mesh_app.make()
    inbox: list[MeshInbound] = []
    bob = await mesh_app.peer("dev_bob", inbox)
    await bob.watch_topic("general")
    await wait_until(lambda: bob.last_poll_at.get("general") is not None)
    await fake_slack.push(sk.event_callback(sk.message_event("secret plans <@U2>", ts="1700000500.000500")))
    await wait_until(lambda: any("secret plans" in m.text for m in inbox))
    [got] = [m for m in inbox if "secret plans" in m.text]
    assert got.body_version == 3  # HKDF per-topic key
    assert got.text.endswith(
        "alice: secret plans @Bob B"
    )  # attribution (after the core's [via slack] marker)
    assert got.sender_member_id == mesh_app.seed.gateway.member_id
    rows = [
        r
        for r in mesh_app.broker.topic_messages(mesh_app.seed.mesh_id, mesh_app.seed.general_topic_id)
        if r.id == got.id
    ]
    assert (
        rows and rows[0].body_version == 3 and "secret plans" not in rows[0].ciphertext
    )  # the broker sees ciphertext


async def test_burst_from_the_mesh_is_complete_and_paced_and_429_pauses_one_channel(mesh_app, fake_slack):
    await mesh_app.make(channels=("C1", "C2"))
    alice = await mesh_app.peer("dev_alice")
    fake_slack.fail_429["C1"].append(2)
    for i in range(6):
        await alice.post_topic("general", f"burst {i}")
        # topic history orders rows by created_at (ms); rows of the same millisecond come back in
        # arbitrary order, so keep the posts in distinct milliseconds to make "in order" meaningful
        await asyncio.sleep(0.005)
    await fake_slack.wait_posts("C2", 6, within=25)
    assert fake_slack.texts("C2") == [f"alice: burst {i}" for i in range(6)]  # C2 kept flowing, in order
    await fake_slack.wait_posts("C1", 6, within=25)
    assert fake_slack.texts("C1") == [f"alice: burst {i}" for i in range(6)]  # C1 resumed after Retry-After
    assert fake_slack.rate_violations == []  # never faster than ~1/s per channel (burst 3)


async def test_own_posts_never_come_back_into_the_mesh(mesh_app, fake_slack):
    fake_slack.echo = True  # Slack sends our own posts back as message events
    await mesh_app.make(ignore_bots=False)
    alice = await mesh_app.peer("dev_alice")
    await alice.post_topic("general", "ping from the mesh")
    await fake_slack.wait_posts("C1", 1)
    await wait_until(lambda: len(fake_slack.echoed) == 1 and len(fake_slack.acks) >= 1)
    await asyncio.sleep(1.0)  # several poll intervals: time for a loop to show, if there were one
    rows = mesh_app.broker.topic_messages(mesh_app.seed.mesh_id, mesh_app.seed.general_topic_id)
    assert len(rows) == 1  # only alice's post: the echo was not relayed back into the topic
    assert fake_slack.texts("C1") == ["alice: ping from the mesh"]
