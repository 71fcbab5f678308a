"""post_topic(find_id=False) skips the read-back, and the dev broker counts frames per member."""

from __future__ import annotations


async def test_post_without_read_back_and_the_brokers_frame_counts(broker, make_peer, new_inbox):
    seed = broker.default_mesh
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, on_message=inbox)
    alice = await make_peer(seed.alice)
    await gw.watch_topic("general")
    before = broker.frame_counts[(seed.alice.member_id, "topic_history")]
    assert await alice.post_topic("general", "no read-back", find_id=False) is None
    await inbox.wait(1)
    assert inbox.texts == ["no read-back"]
    assert broker.frame_counts[(seed.alice.member_id, "topic_history")] == before  # nothing read back
    assert broker.frame_counts[(seed.alice.member_id, "send")] == 1
    assert broker.frame_counts[(seed.gateway.member_id, "topic_history")] >= 1  # the gateway's polls
    mid = await alice.post_topic("general", "with read-back")
    assert mid is not None and broker.frame_counts[(seed.alice.member_id, "topic_history")] > before
