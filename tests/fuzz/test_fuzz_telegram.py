"""Fuzz: Telegram webhook updates (the route and the update -> Message conversion behind it).

Invariant: with the right secret token, any body gets 200 (taken or skipped) or a 4xx with nothing
submitted; never a 5xx or an exception; and a good update right after still reaches the core.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from claudemesh_gateway.testing import wait_until
from hypothesis import strategies as st

from .conftest import fuzz, json_values, mutate, nasty_text, tg_fake, with_deep_json

HEADER = "X-Telegram-Bot-Api-Secret-Token"
SECRET = "s3cret_webhook-Token"
CHAT = -100600
_fake = tg_fake.FakeBotAPI()
_ids = itertools.count(1)

MESSAGE_KEYS = ["message_id", "from", "chat", "date", "text", "caption", "entities", "caption_entities",
                "reply_to_message", "message_thread_id", "is_topic_message", "photo", "document", "sticker",
                "voice", "video", "audio", "edit_date", "migrate_to_chat_id", "new_chat_members", "forward_origin"]


@st.composite
def updates(draw: Any) -> bytes:
    """A body Telegram could never send, in one of several shapes."""
    shape = draw(st.sampled_from(["raw", "json", "update", "message", "nested"]))
    if shape == "raw":
        return draw(st.binary(max_size=200))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    msg = _fake.make_message(CHAT, draw(nasty_text), message_id=draw(st.integers(1, 2**31)))
    kind = draw(st.sampled_from(["message", "edited_message", "channel_post", "edited_channel_post",
                                 "callback_query", "my_chat_member"]))
    if shape == "message":
        msg = mutate(msg, draw, keys=MESSAGE_KEYS)
    elif shape == "nested":
        part = draw(st.sampled_from(["from", "chat"]))
        if isinstance(msg.get(part), dict):
            msg[part] = mutate(msg[part], draw, keys=["id", "type", "is_bot", "first_name", "username", "title",
                                                     "is_forum"])
    update: dict[str, Any] = {"update_id": draw(st.integers(-(2**63), 2**63)), kind: msg}
    if shape == "update":
        update = mutate(update, draw, keys=["update_id", kind, "message"])
    return json.dumps(update).encode()


async def test_fuzz_telegram_webhook_updates(tg_webhook):
    _gw, ctx, client = tg_webhook

    async def one(body: bytes) -> None:
        before = len(ctx.submitted)
        resp = await client.post("/gateways/tg/webhook", data=body,
                                 headers={HEADER: SECRET, "Content-Type": "application/json"})
        assert resp.status in (200, 400), (resp.status, body[:200])
        if resp.status != 200:
            assert len(ctx.submitted) == before
        assert len(ctx.submitted) <= before + 1
        # good input after bad still flows
        n = next(_ids)
        good = _fake.make_update(_fake.make_message(CHAT, f"good {n}", message_id=10_000_000 + n))
        resp = await client.post("/gateways/tg/webhook", json=good, headers={HEADER: SECRET})
        assert resp.status == 200
        assert ctx.submitted[-1].text == f"good {n}"

    await fuzz(with_deep_json(updates()), one)


# -- polling: getUpdates answers ------------------------------------------------------------------------------
update_ids = st.integers(-(2**70), 2**70) | st.sampled_from([None, True, "12", 1.5, [], {}, "x" * 40]) | \
    st.integers(0, 2**31)


@st.composite
def update_batches(draw: Any) -> list[Any]:
    """What getUpdates could answer besides good updates: junk entries and updates with odd ids."""
    batch: list[Any] = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 3)) == 0:
            batch.append(draw(json_values))
            continue
        msg = _fake.make_message(CHAT, draw(nasty_text), message_id=draw(st.integers(1, 2**31)))
        update = {"update_id": draw(update_ids), "message": msg}
        if draw(st.booleans()):
            update = mutate(update, draw, keys=["update_id", "message", "edited_message"])
        batch.append(update)
    return batch


async def test_fuzz_telegram_polling_updates(tg_polling):
    gw, ctx, fake = tg_polling

    async def one(batch: list[Any]) -> None:
        n = next(_ids)
        good = {"update_id": 10_000_000 + n, "message": _fake.make_message(CHAT, f"polled {n}",
                                                                           message_id=20_000_000 + n)}
        fake.script.append([*batch, good])
        await wait_until(lambda: any(m.text == f"polled {n}" for m in ctx.submitted), 10, "the good update")
        assert not fake.errors, fake.errors
        assert gw.restarts == 0

    await fuzz(update_batches(), one)
