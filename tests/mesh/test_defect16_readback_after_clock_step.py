"""Issue 16 (found by tests/faults/test_faults16_clock_jump.py at CLAUDEMESH_FAULT_SCALE=10): after
the broker's clock stepped back, ``post_topic`` could not read back the topic_message id of its
own post. It looked only at the newest 50 rows of ``topic_history``, which is ordered by the
broker's clock, so more than 50 rows written while the clock ran fast hid every later post: each
post returned None after three reads and 1.2 s of sleeps with a warning (the gateway then had no
native id for it: replies and edits to it lost their thread), and a source that retried on None
posted twice. Now the read-back pages back by ``beforeId`` (bounded by ``READBACK_MAX_ROWS``)."""

from __future__ import annotations

import logging

from claudemesh_gateway.mesh import peer as peer_mod

FAST_MS = 50_000


async def test_defect16_post_topic_finds_its_row_under_rows_from_a_fast_clock(broker, make_peer, caplog):
    broker.set_rate_limit(1000, 600_000)
    seed = broker.default_mesh
    alice = await make_peer(seed.alice, rate_burst=1000, rate_per_minute=600_000)
    broker.config.clock_offset_ms = FAST_MS  # the broker's clock runs 50 s fast ...
    for i in range(120):  # ... for more than a page of rows
        assert await alice.post_topic("general", f"fast {i}")
    broker.config.clock_offset_ms = 0  # ... and is put right: new rows sort under all of those
    caplog.set_level(logging.WARNING, logger="claudemesh_gateway.mesh.peer")
    ids = [await alice.post_topic("general", f"right {i}") for i in range(3)]
    assert all(ids), ids
    rows = {m.id: m for m in broker.topic_messages(topic_id=seed.general_topic_id)}
    assert all(i in rows for i in ids)
    assert len(set(ids)) == 3
    assert not [r for r in caplog.records if "could not find the topic message id" in r.getMessage()]


async def test_defect16_read_back_is_bounded(broker, make_peer, monkeypatch, caplog):
    """Under more fast rows than ``READBACK_MAX_ROWS`` the post still succeeds; only the id is
    not found (one warning), and the search reads a bounded number of pages."""
    monkeypatch.setattr(peer_mod, "READBACK_MAX_ROWS", 250)
    broker.set_rate_limit(1000, 600_000)
    alice = await make_peer(broker.default_mesh.alice, rate_burst=1000, rate_per_minute=600_000)
    broker.config.clock_offset_ms = FAST_MS
    for i in range(400):
        assert await alice.post_topic("general", f"fast {i}")
    broker.config.clock_offset_ms = 0
    reads = []
    real = alice.topic_history

    async def counting(*a, **kw):
        reads.append(kw.get("before_id"))
        return await real(*a, **kw)

    monkeypatch.setattr(alice, "topic_history", counting)
    caplog.set_level(logging.WARNING, logger="claudemesh_gateway.mesh.peer")
    assert await alice.post_topic("general", "right") is None
    # three attempts, each: the newest 50, then one page of 200, and no further (250 rows read)
    assert len(reads) == 3 * 2 and reads[0] is None and reads[1] is not None, reads
    assert len([r for r in caplog.records if "could not find the topic message id" in r.getMessage()]) == 1
