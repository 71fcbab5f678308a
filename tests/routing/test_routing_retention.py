"""Retention through the real reply path: a message whose thread is still active keeps its
message map past the reply window (each resolved reply restarts it); a quiet one is pruned."""

from __future__ import annotations

import pytest
from claudemesh_gateway.store.retention import DAY, RetentionConfig
from claudemesh_gateway.store.sqlite import SqliteStore

from .conftest import drain, msg

ROOM = {"name": "room", "mesh": "m", "topic": "general",
        "binds": [{"gateway": "tg", "chat": "c1"}, {"gateway": "sl", "chat": "C1"}]}


class Clock:
    t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path, clock):  # overrides conftest's: the same store on a virtual clock
    s = SqliteStore(tmp_path / "routing.sqlite3", clock=clock, retention=RetentionConfig(interval_s=0))
    await s.open()
    yield s
    await s.close()


async def test_replies_keep_their_message_map_alive_past_the_window(make_runtime, store, clock):
    rt = make_runtime([ROOM])
    await rt.pipeline.submit(msg("question?", chat="c1", mid="tg:q", native_id="900"))
    await rt.pipeline.submit(msg("aside", chat="c1", mid="tg:o", native_id="901"))
    await drain(rt)
    (sl_question,) = await store.map_get("tg:q", "sl/C1")
    for day, mid, pruned in ((25, "sl:r1", 0), (50, "sl:r2", 3)):  # a Slack reply to the Slack copy, 25 days apart
        clock.t += 25 * DAY
        assert (await store.purge())["message_map"] == pruned  # day 50: the aside's 3 rows (tg, sl, topic)
        await rt.pipeline.submit(msg(f"reply on day {day}", gateway="sl", chat="C1", mid=mid,
                                     native_id=f"77.{day}", reply_to=sl_question))
        await drain(rt)
        tg_reply = rt.gateways["tg"].sent[-1]
        assert tg_reply.text.endswith(f"reply on day {day}")
        assert tg_reply.reply_to == "900"  # still threaded under the Telegram original
    # 50 days after it was sent, the question is still mapped (last used on day 50); the aside is not
    assert await store.map_get("tg:q", "sl/C1") == [sl_question]
    assert await store.map_get("tg:o", "sl/C1") == [] and await store.map_get("tg:o", "tg/c1") == []
    clock.t += 31 * DAY  # a month without replies: the thread is quiet, its rows go too
    await store.purge()
    assert await store.map_get("tg:q", "sl/C1") == []
