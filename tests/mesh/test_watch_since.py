"""A topic's first poll takes every post made since the watch began, however long the join took
and across a process killed before that first poll was saved (CI found 3 posts lost this way: the
gateway answered /-/ready, the join was still under way, posts made then were taken for history)."""

from __future__ import annotations

import asyncio
import time

from claudemesh_gateway.mesh import MemoryKV


async def test_posts_during_a_slow_join_are_delivered(broker, make_peer, new_inbox, monkeypatch):
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox)
    alice = await make_peer(seed.alice)
    await alice.post_topic("general", "before the watch")  # history: topic_backfill is 0
    await asyncio.sleep(0.005)
    since = int(time.time() * 1000)
    joined = asyncio.Event()
    real_join = gw.join_topic

    async def slow_join(name):
        await joined.wait()  # the posts below are made while the join is under way
        return await real_join(name)

    monkeypatch.setattr(gw, "join_topic", slow_join)
    watching = asyncio.create_task(gw.watch_topic("general", since_ms=since))
    for i in range(3):
        await alice.post_topic("general", f"during the join {i}")
    joined.set()
    await watching
    await alice.post_topic("general", "after")
    await inbox.wait(4)
    assert inbox.texts == ["during the join 0", "during the join 1", "during the join 2", "after"]


async def test_a_watch_killed_before_its_first_poll_keeps_its_start(broker, make_peer, new_inbox):
    seed = broker.default_mesh
    kv = MemoryKV()
    first = await make_peer(seed.gateway, kv=kv)
    alice = await make_peer(seed.alice)
    since = int(time.time() * 1000)

    async def never(name):
        await asyncio.Event().wait()

    first.join_topic = never  # the first life dies joining: no poll, no cursor saved
    dying = asyncio.create_task(first.watch_topic("general", since_ms=since))
    await asyncio.sleep(0.05)
    await alice.post_topic("general", "while the first life joined")
    dying.cancel()
    await first.stop()
    await asyncio.sleep(0.005)

    inbox = new_inbox()
    second = await make_peer(seed.gateway, kv=kv, on_message=inbox)
    await second.watch_topic("general")  # a later start: its own "now" is after the post
    await alice.post_topic("general", "in the second life")
    await inbox.wait(2)
    assert inbox.texts == ["while the first life joined", "in the second life"]


async def test_many_watches_share_one_topic_list(broker, make_peer, monkeypatch):
    """Watching many topics at once sends one topic_list, not one each (1,000 topics timed out)."""
    seed = broker.default_mesh
    gw = await make_peer(seed.gateway)
    sent: list[str] = []
    real_request = gw.connection.request

    async def counting(frame, *a, **kw):
        sent.append(frame.get("type"))
        return await real_request(frame, *a, **kw)

    monkeypatch.setattr(gw.connection, "request", counting)
    await asyncio.gather(*(gw.resolve_topic("general") for _ in range(50)))
    assert sent.count("topic_list") == 1


async def test_a_topic_that_cannot_be_watched_yet_is_tried_again(monkeypatch):
    from claudemesh_gateway import meshes
    from claudemesh_gateway.errors import MeshError, MeshTerminalError

    monkeypatch.setattr(meshes, "WATCH_RETRY_FIRST_S", 0.01)
    calls: list[int | None] = []

    class Peer:
        async def watch_topic(self, name, *, since_ms=None):
            calls.append(since_ms)
            if len(calls) < 3:
                raise MeshError(f"topic {name!r} does not exist")

    await asyncio.wait_for(meshes.watch(Peer(), "dev", "later", 123), 5)
    assert calls == [123, 123, 123]  # the same start each time: posts from then on are still ours

    class Refused:
        async def watch_topic(self, name, *, since_ms=None):
            calls.append(None)
            raise MeshTerminalError("bad_signature", "bad credentials")

    calls.clear()
    await asyncio.wait_for(meshes.watch(Refused(), "dev", "x"), 5)
    assert calls == [None]  # refused for good: not retried
