"""Rings of bridges: A -> B -> C -> A, with mesh B on a second dev broker. Each message reaches each
mesh exactly once and never loops: in one gateway process (its own posts are echoes for it), and
across three gateway processes with their own identities (the ``__cmh<n>:`` hop limit stops it)."""

from __future__ import annotations

import asyncio

from .conftest import wait_until

TOPIC = {"a": "general", "b": "lobby", "c": "lobby"}


def _foreign(net, mesh, members):
    """Texts on ``mesh``'s bridged topic posted by anyone but ``members`` (display names)."""
    return [r["text"] for r in net.rows(mesh, TOPIC[mesh]) if r["sender"] not in members]


async def test_bridge_ring_in_one_process(net, bridge_app):
    config = {
        "gateways": {"to_a": {"type": "bridge", "mesh": "a"}, "to_b": {"type": "bridge", "mesh": "b"},
                     "to_c": {"type": "bridge", "mesh": "c"}},
        "routes": [
            {"name": "ab", "mesh": "a", "topic": "general", "binds": [{"gateway": "to_b", "chat": "lobby"}]},
            {"name": "bc", "mesh": "b", "topic": "lobby", "binds": [{"gateway": "to_c", "chat": "lobby"}]},
            {"name": "ca", "mesh": "c", "topic": "lobby", "binds": [{"gateway": "to_a", "chat": "general"}]},
        ],
    }
    _client, rt = await bridge_app(config, meshes={"a": "a", "b": "b", "c": "c"},
                                  ready=[("a", "general"), ("b", "lobby"), ("c", "lobby")])
    alice = await net.member("a_alice")
    bob = await net.member("b_bob")
    carol = await net.member("c_carol")
    posts = [(alice, "a", "from-a"), (bob, "b", "from-b"), (carol, "c", "from-c")]
    for peer, mesh, text in posts:
        await peer.post_topic(TOPIC[mesh], text)
        await asyncio.sleep(0.01)

    def relayed(mesh):
        return [r["text"] for r in net.rows(mesh, TOPIC[mesh]) if r["sender"] == "gateway"]

    await wait_until(lambda: all(len(relayed(m)) >= 2 for m in "abc"), what="every message on every mesh")
    await asyncio.sleep(1.2)  # poll rounds: a loop or an echo would post more
    for mesh in "abc":
        got = relayed(mesh)
        expected = {f"__cmh1:{who}: from-{src}" for who, src in (("alice", "a"), ("bob", "b"), ("carol", "c"))
                    if src != mesh}
        assert sorted(got) == sorted(expected), (mesh, got)
    assert await rt.store.dlq_count() == 0


async def test_bridge_ring_across_three_processes(net, bridge_app):
    """app1 carries A -> B, app2 B -> C, app3 C -> A, each with identities of its own."""
    hops = [("a", "b"), ("b", "c"), ("c", "a")]
    apps = []
    for i, (src, dst) in enumerate(hops, 1):
        me = f"gw{i}"
        config = {
            "gateways": {f"to_{dst}": {"type": "bridge", "mesh": dst}},
            "routes": [{"name": f"{src}{dst}", "mesh": src, "topic": TOPIC[src], "direction": "out",
                        "attribution": f"{{sender}} @ {src}: {{text}}",
                        "binds": [{"gateway": f"to_{dst}", "chat": TOPIC[dst]}]}],
        }
        meshes = {src: net.identity(src, me), dst: net.identity(dst, me)}
        apps.append(await bridge_app(config, meshes=meshes, ready=[(src, TOPIC[src])]))
    alice = await net.member("a_alice")
    await alice.post_topic("general", "round we go")
    people = {"alice", "bob", "carol", "gateway"}
    await wait_until(lambda: _foreign(net, "c", people), what="the second crossing (B -> C)")
    await asyncio.sleep(1.5)  # app3 reads C; the third crossing (C -> A) must be refused
    assert _foreign(net, "b", people) == ["__cmh1:alice @ a: round we go"]
    # app2 saw gw1's post on B as one crossing old: it re-attributes and counts the second crossing
    assert _foreign(net, "c", people) == ["__cmh2:gw1 @ b: alice @ a: round we go"]
    assert _foreign(net, "a", people) == []  # never back to A: the hop limit (2) stopped it
    # control: app3 does carry C -> A (so the silence above is the hop limit, not a dead bridge)
    carol = await net.member("c_carol")
    await carol.post_topic("lobby", "hi from C")
    await wait_until(lambda: _foreign(net, "a", people), what="carol's post on A")
    assert _foreign(net, "a", people) == ["__cmh1:carol @ c: hi from C"]
    for _client, rt in apps:
        assert await rt.store.dlq_count() == 0
