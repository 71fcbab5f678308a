"""The Telegram gateway inside the real core app: routing, attribution, splitting, the message
map (replies/edits), the delivery engine's rate limits and per-chat 429 pauses.

A route binding Telegram chats to each other relays between them through the core, so these
tests need no mesh; the mesh end-to-end tests are in test_telegram_mesh_e2e.py.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from claudemesh_gateway import DeliveryFailed, Event, hookimpl
from claudemesh_gateway.testing import build_test_app, wait_until

A, B, C = "-100001", "-100002", "-100003"
SECRET = "s3cret_webhook-Token"


class Observer:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def track_event(self, event: Event) -> None:
        self.events.append(event)




@pytest.fixture
async def app(tmp_path, fake_tg, tg_token):
    clients = []

    async def make(binds=(A, B), **gw_extra):
        cfg = {
            "gateways": {"tg": {"type": "telegram", "token": tg_token, "api_base": fake_tg.url,
                                "poll_timeout": 1, **gw_extra}},
            "routes": [{"name": "room", "binds": [{"gateway": "tg", "chat": c} for c in binds]}],
        }
        observer = Observer()
        state = tmp_path / f"s{len(clients)}"
        state.mkdir()
        client, runtime = await build_test_app(cfg, state_dir=state, plugins=[("tg-observer", observer)])
        clients.append(client)
        return client, runtime, observer

    yield make
    for c in reversed(clients):
        await c.close()


async def test_relay_with_attribution_and_escaping(app, fake_tg):
    await app()
    fake_tg.add_message(int(A), "x < y & <b>not bold</b>")
    await fake_tg.wait_sent(B, 1)
    [p] = [p for p in fake_tg.method_calls("sendMessage") if str(p["chat_id"]) == B]
    assert p["parse_mode"] == "HTML"
    assert fake_tg.texts(B) == ["Ada Lovelace: x < y & <b>not bold</b>"]  # shown literally
    assert fake_tg.texts(A) == []  # never echoed to its origin


async def test_replies_and_edits_follow_the_message_map_both_ways(app, fake_tg):
    await app()
    orig = fake_tg.add_message(int(A), "question")["message"]
    [copy] = await fake_tg.wait_sent(B, 1)
    # a reply in A to the original -> in B, a reply to the copy
    fake_tg.add_message(int(A), "follow-up", reply_to=orig["message_id"])
    sent = await fake_tg.wait_sent(B, 2)
    assert sent[1]["reply_to_message"]["message_id"] == copy["message_id"]
    # a reply in B to the copy -> in A, a reply to the original
    fake_tg.add_message(int(B), "answer", reply_to=copy["message_id"], from_id=222, first_name="Bo",
                        last_name=None, username="bo")
    [back] = await fake_tg.wait_sent(A, 1)
    assert back["reply_to_message"]["message_id"] == orig["message_id"] and back["text"] == "Bo: answer"
    # an edit of the original -> editMessageText of the copy
    fake_tg.add_edit(orig, "question (fixed)")
    try:
        await wait_until(lambda: any(e["message_id"] == copy["message_id"] for e in fake_tg.edits), 5)
    except TimeoutError:
        raise AssertionError([(m, p.get("chat_id"), p.get("text")) for m, p in fake_tg.calls if m != "getUpdates"]) from None
    assert fake_tg.edits[-1]["text"] == "Ada Lovelace: question (fixed)" and fake_tg.edits[-1]["chat"] == B


async def test_5000_characters_split_by_the_core_arrive_in_order(app, fake_tg):
    await app()
    text = "".join(f"{i:05d} <&> lorem ipsum dolor sit amet\n" for i in range(160))
    assert len(text) > 5000
    fake_tg.add_message(int(A), text)
    parts = await fake_tg.wait_sent(B, 2)
    await asyncio.sleep(0.2)
    assert len(fake_tg.sent[B]) == 2
    assert all(len(p["text"]) <= 4096 for p in parts)
    assert parts[0]["text"].startswith("Ada Lovelace: 00000 <&> lorem")
    joined = "\n".join(p["text"] for p in parts)
    numbers = [int(n) for n in re.findall(r"(?m)^(?:Ada Lovelace: )?(\d{5}) <&> lorem ipsum dolor sit amet", joined)]
    assert numbers == list(range(160))  # complete and in order
    assert parts[1].get("reply_to_message") is None


async def test_burst_of_ten_into_one_group_is_paced_without_a_429(app, fake_tg):
    await app()
    for i in range(10):
        fake_tg.add_message(int(A), f"burst {i}")
    await fake_tg.wait_sent(B, 10, limit_s=25)
    assert fake_tg.texts(B) == [f"Ada Lovelace: burst {i}" for i in range(10)]
    assert fake_tg.violations == []  # the fake's own limiter never tripped


async def test_429_on_one_chat_leaves_another_chat_flowing(app, fake_tg):
    _, _, obs = await app(binds=(A, B, C))
    fake_tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 2", chat=B, retry_after=2)
    fake_tg.add_message(int(A), "one")
    fake_tg.add_message(int(A), "two")
    await fake_tg.wait_sent(C, 2, limit_s=10)
    assert fake_tg.texts(B) == []  # B is paused for retry_after; C was not held up
    await fake_tg.wait_sent(B, 2, limit_s=15)
    assert fake_tg.texts(B) == ["Ada Lovelace: one", "Ada Lovelace: two"]  # order kept after the pause
    assert not [e for e in obs.events if isinstance(e, DeliveryFailed) and e.permanent]


async def test_webhook_mounted_by_the_app(app, fake_tg):
    client, _runtime, _ = await app(mode="webhook", webhook_secret=SECRET, public_url="https://gw.example.org")
    await wait_until(lambda: bool(fake_tg.webhook.get("url")))
    assert fake_tg.webhook["url"] == "https://gw.example.org/gateways/tg/webhook"
    upd = fake_tg.make_update(fake_tg.make_message(int(A), "via webhook"))
    forged = await client.post("/gateways/tg/webhook", json=upd, headers={"X-Telegram-Bot-Api-Secret-Token": "x"})
    assert forged.status == 403
    ok = await client.post("/gateways/tg/webhook", json=upd, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert ok.status == 200
    await fake_tg.wait_sent(B, 1)
    assert fake_tg.texts(B) == ["Ada Lovelace: via webhook"]


async def test_in_chat_command_is_answered_in_the_same_chat(app, fake_tg):
    await app()
    cmd = fake_tg.add_message(int(A), "/help@mesh_test_bot",
                              entities=[{"type": "bot_command", "offset": 0, "length": 19}])["message"]
    [answer] = await fake_tg.wait_sent(A, 1)
    assert answer["reply_to_message"]["message_id"] == cmd["message_id"]
    assert "/topics" in answer["text"] or "/help" in answer["text"]
    await asyncio.sleep(0.2)
    assert fake_tg.texts(B) == []  # a command is not relayed


async def test_a_photo_reaches_a_chat_of_another_bot_as_an_upload(tmp_path, aiohttp_server, fake_tg, tg_token,
                                                                   tg_fake_module):
    """Issue 4: files up to a configurable size pass to destinations that take files. A file_id is
    only good for the bot that saw it, so the core fetches the bytes from bot 1 (getFile + download)
    and bot 2 uploads them."""
    other_token = "654321:OTHER-token_abcdefghijklmnopqrstuvwxyz01"
    fake2 = tg_fake_module.FakeBotAPI(other_token)
    server2 = await aiohttp_server(fake2.app)
    fake2.url = str(server2.make_url("")).rstrip("/")
    cfg = {
        "gateways": {
            "tg1": {"type": "telegram", "token": tg_token, "api_base": fake_tg.url, "poll_timeout": 1},
            "tg2": {"type": "telegram", "token": other_token, "api_base": fake2.url, "poll_timeout": 1},
        },
        "routes": [{"name": "room", "binds": [{"gateway": "tg1", "chat": A}, {"gateway": "tg2", "chat": B}]}],
    }
    client, _runtime = await build_test_app(cfg, state_dir=tmp_path)
    try:
        content = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
        fid = fake_tg.add_file(content, "photos/file_9.png")
        fake_tg.add_message(int(A), None, caption="the chart",
                            photo=[{"file_id": fid, "file_unique_id": fid, "width": 10, "height": 10,
                                    "file_size": len(content)}])
        [sent] = await fake2.wait_sent(B, 1)
        assert sent["caption"] == "Ada Lovelace: the chart"
        uploaded = sent["photo"][-1]["file_id"]
        assert fake2.files[uploaded][1] == content  # the same bytes, uploaded by bot 2
        assert [c["file_id"] for c in fake_tg.method_calls("getFile")] == [fid]  # fetched from bot 1
        [call] = fake2.method_calls("sendPhoto")
        assert not isinstance(call["photo"], str)  # an upload, not bot 1's file_id (useless to bot 2)
    finally:
        await client.close()
