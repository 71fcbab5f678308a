"""Tags across meshes (a tag on mesh A fans out as DMs to tagged peers of mesh B), ``/dm`` typed
on the far mesh (off by default: dropped at the bridge, never relayed; ``allow_dm = true``: a DM to
a peer of the route's mesh) and ``/dm peer@<far mesh>`` from the near mesh (``allow_dm`` again)."""

from __future__ import annotations

import asyncio

from .conftest import two_way, wait_until


def _dms(box):
    return [m.text for m in box if m.kind == "dm"]


async def test_bridge_tag_reaches_tagged_peers_of_the_far_mesh(net, bridge_app):
    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [*two_way(), {"name": "ops", "tags": ["ops"], "direction": "out",
                                "binds": [{"gateway": "mesh", "chat": "b:tag:ops"}]}],
    }
    _client, rt = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("a", "general"), ("b", "lobby")])
    bob_box, other_box = [], []
    await net.member("b_bob", on_message=bob_box.append, groups=("ops",))
    await net.member("b_alice", on_message=other_box.append)  # on B, not tagged
    alice = await net.member("a_alice")

    async def tagged() -> bool:
        await rt.meshes["b"].peers(refresh=True)
        return bool(await rt.meshes["b"].peers_with_tag("ops"))

    async with asyncio.timeout(10):
        while not await tagged():  # noqa: ASYNC110 (the roster lives on the broker)
            await asyncio.sleep(0.1)

    await alice.post_topic("general", "tag:ops deploy done")
    await wait_until(lambda: _dms(bob_box), what="the tagged DM on B")
    await wait_until(lambda: net.rows("b", "lobby"), what="the topic copy on B")
    await asyncio.sleep(0.8)
    assert _dms(bob_box) == ["__cmh1:alice: deploy done"]  # one crossing, tag token stripped
    assert _dms(other_box) == []
    assert [r["text"] for r in net.rows("b", "lobby")] == ["__cmh1:alice @ a: deploy done"]


async def test_bridge_far_dm_command_dropped_by_default(net, bridge_app):
    config = {"gateways": {"to_b": {"type": "bridge", "mesh": "b"}}, "routes": two_way()}
    _client, _rt = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("a", "general"), ("b", "lobby")])
    alice_box = []
    await net.member("a_alice", on_message=alice_box.append)
    bob = await net.member("b_bob")
    await bob.post_topic("lobby", "/dm alice psst, private")
    await asyncio.sleep(0.01)
    await bob.post_topic("lobby", "tag:x /DM alice also private")
    await asyncio.sleep(0.01)
    await bob.post_topic("lobby", "public again")
    await wait_until(lambda: [r for r in net.rows("a", "general") if r["sender"] == "gateway"], what="the public post")
    await asyncio.sleep(0.8)
    assert [r["text"] for r in net.rows("a", "general")] == ["__cmh1:bob @ b: public again"]
    assert _dms(alice_box) == []
    assert [r["text"] for r in net.rows("b", "lobby")][-1] == "public again"  # no command reply either


async def test_bridge_far_dm_command_allowed(net, bridge_app):
    config = {"gateways": {"to_b": {"type": "bridge", "mesh": "b", "allow_dm": True}}, "routes": two_way()}
    _client, rt = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("a", "general"), ("b", "lobby")])
    alice_box = []
    alice = await net.member("a_alice", on_message=alice_box.append)
    bob = await net.member("b_bob")
    await rt.meshes["a"].peers(refresh=True)
    await bob.post_topic("lobby", "/dm alice psst")
    await wait_until(lambda: _dms(alice_box), what="the DM on A")
    await wait_until(lambda: len(net.rows("b", "lobby")) == 2, what="the command's answer on B")
    assert _dms(alice_box) == ["__cmh1:bob @ b: psst"]  # a DM across meshes names the sender's mesh
    assert net.rows("b", "lobby")[-1]["text"] == "DM to alice queued."
    assert net.rows("b", "lobby")[-1]["reply_to"] == net.rows("b", "lobby")[0]["id"]
    assert [r for r in net.rows("a", "general")] == []  # never relayed into the topic
    assert alice is not None


async def _gateway_pubkey(member) -> str:
    return (await member.resolve_peer("gateway")).pubkey


async def _roster_has(rt, mesh: str, name: str) -> None:
    async def has() -> bool:
        return any(p.display_name == name for p in await rt.meshes[mesh].peers(refresh=True))

    async with asyncio.timeout(10):
        while not await has():  # noqa: ASYNC110 (the roster lives on the broker)
            await asyncio.sleep(0.1)


async def test_dm_peer_at_far_mesh_from_a_mesh_dm(net, bridge_app):
    """alice DMs the gateway on mesh A: ``/dm bob@b ...`` reaches bob on mesh B (a crypto_box DM
    from the gateway's B identity, decrypted by bob); ``/dm bob ...`` with a bob on both meshes asks
    which one."""
    config = {"gateways": {"to_b": {"type": "bridge", "mesh": "b", "allow_dm": True}}, "routes": two_way()}
    _client, rt = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("a", "general"), ("b", "lobby")])
    alice_box, bob_a_box, bob_b_box = [], [], []
    alice = await net.member("a_alice", on_message=alice_box.append)
    await net.member("a_bob", on_message=bob_a_box.append)
    bob = await net.member("b_bob", on_message=bob_b_box.append)
    await _roster_has(rt, "a", "bob")
    await _roster_has(rt, "b", "bob")
    gateway = await _gateway_pubkey(alice)

    await alice.send_dm(gateway, "/dm bob which bob?")
    await wait_until(lambda: _dms(alice_box), what="the answer to the ambiguous /dm")
    await alice.send_dm(gateway, "/dm bob@b hello from A")
    await wait_until(lambda: _dms(bob_b_box), what="the DM on B")
    await wait_until(lambda: len(_dms(alice_box)) == 2, what="the second answer")
    await asyncio.sleep(0.5)
    first, second = _dms(alice_box)
    assert "'bob' is on several meshes (a, b)" in first and "/dm bob@<mesh>" in first
    assert second == "DM to bob on b queued."
    assert _dms(bob_b_box) == ["__cmh1:alice @ a: hello from A"]
    dm = next(m for m in bob_b_box if m.kind == "dm")
    assert dm.sender_pubkey == (await bob.resolve_peer("gateway")).pubkey  # sent by the core's B identity
    assert _dms(bob_a_box) == []
    assert net.rows("a", "general") == [] and net.rows("b", "lobby") == []  # never relayed


async def test_dm_peer_at_far_mesh_refused_when_the_bridge_disallows_dms(net, bridge_app):
    config = {"gateways": {"to_b": {"type": "bridge", "mesh": "b"}}, "routes": two_way()}  # allow_dm = false
    _client, rt = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("a", "general"), ("b", "lobby")])
    alice_box, bob_box = [], []
    alice = await net.member("a_alice", on_message=alice_box.append)
    await net.member("b_bob", on_message=bob_box.append)
    await _roster_has(rt, "b", "bob")
    await alice.send_dm(await _gateway_pubkey(alice), "/dm bob@b hello from A")
    await wait_until(lambda: _dms(alice_box), what="the refusal")
    await asyncio.sleep(0.5)
    assert _dms(alice_box) == ["DMs to mesh b are off: bridge to_b has allow_dm = false. Nothing was sent."]
    assert _dms(bob_box) == []
    assert net.rows("b", "lobby") == []


async def test_dm_peer_at_far_mesh_from_a_signed_webhook(net, bridge_app, aiohttp_server):
    """A platform chat (a signed webhook) bound to the bridged route: ``/dm bob@b`` reaches bob on B;
    the answer goes back to the webhook chat."""
    import json

    from aiohttp import web
    from claudemesh_gateway.plugins.webhook.signature import signature_headers

    received: list[dict] = []

    async def sink(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.json_response({"id": f"r{len(received)}"})

    app = web.Application()
    app.router.add_post("/sink", sink)
    server = await aiohttp_server(app)
    secret = "bridge-dm-webhook-secret-0123456789"
    config = {
        "gateways": {"to_b": {"type": "bridge", "mesh": "b", "allow_dm": True},
                     "hooks": {"type": "webhook", "secret": secret}},
        "routes": [{"name": "ab", "mesh": "a", "topic": "general", "binds": [
            {"gateway": "to_b", "chat": "lobby"},
            {"gateway": "hooks", "chat": "ci", "options": {"url": str(server.make_url("/sink"))}}]}],
    }
    client, rt = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("a", "general"), ("b", "lobby")])
    bob_box = []
    await net.member("b_bob", on_message=bob_box.append)
    await _roster_has(rt, "b", "bob")
    body = json.dumps({"id": "dm-1", "sender": "CI", "text": "/dm bob@b build 7 is green"}).encode()
    resp = await client.post("/gateways/hooks/ci", data=body,
                             headers={**signature_headers(secret, body), "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "queued"
    await wait_until(lambda: _dms(bob_box), what="the DM on B")
    await wait_until(lambda: received, what="the answer on the webhook")
    await asyncio.sleep(0.5)
    assert _dms(bob_box) == ["[via hooks] CI: build 7 is green"]
    assert [r["text"] for r in received] == ["DM to bob on b queued."]
    assert net.rows("a", "general") == [] and net.rows("b", "lobby") == []  # never relayed
