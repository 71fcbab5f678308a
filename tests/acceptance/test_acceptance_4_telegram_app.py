"""#4 through the whole app on the dev broker, with a minimal fake Bot API on loopback:
- a mesh topic post appears in a bound *forum topic* (message_thread_id) with attribution
  (tests/telegram/test_telegram_mesh_e2e.py checks a plain chat; the forum topic is checked only at
  the gateway's unit level in test_telegram_egress.py);
- an unauthorised Telegram user's message never reaches the mesh (no topic row at the broker, a
  second peer sees nothing), while an authorised user's does (unit level only in
  test_telegram_ingress.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from aiohttp import web

from .conftest import FAST_POLL, wait_until

TOKEN = "123456:acceptance-telegram-token-abcdefghij"
FORUM = "-1009876543210"
GROUP = "-1001111111111"


class FakeBotAPI:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)

    def add_message(self, chat: str, text: str, *, from_id: int, username: str, **extra: Any) -> dict[str, Any]:
        msg = {"message_id": next(self._message_ids), "date": int(time.time()),
               "chat": {"id": int(chat), "type": "supergroup", "title": "group",
                        **({"is_forum": True} if extra.get("is_topic_message") else {})},
               "from": {"id": from_id, "is_bot": False, "first_name": username.title(), "username": username},
               "text": text, **extra}
        self.updates.append({"update_id": next(self._update_ids), "message": msg})
        return msg

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.content_type == "application/json":
            params = await request.json()
        else:
            params = dict(await request.post())
        if method == "getMe":
            result: Any = {"id": 42, "is_bot": True, "first_name": "acc", "username": "acc_bot",
                           "can_join_groups": True, "can_read_all_group_messages": True,
                           "supports_inline_queries": False}
        elif method == "getUpdates":
            offset = int(params.get("offset") or 0)
            result = [u for u in self.updates if u["update_id"] >= offset]
            if not result:
                await asyncio.sleep(0.1)
        elif method == "sendMessage":
            self.sent.append(params)
            result = {"message_id": next(self._message_ids), "date": int(time.time()),
                      "chat": {"id": int(params["chat_id"]), "type": "supergroup"}, "text": params.get("text", "")}
        elif method == "getWebhookInfo":
            result = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
        else:
            result = True
        return web.json_response({"ok": True, "result": result})


@pytest.fixture
async def fake_bot(aiohttp_server):
    api = FakeBotAPI()
    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", api.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    api.url = str(server.make_url("")).rstrip("/")
    return api


async def test_mesh_post_reaches_a_bound_forum_topic_with_attribution(file_app, dev_broker, member, fake_bot):
    _client, runtime, _ = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"tg": {"type": "telegram", "token": TOKEN, "api_base": fake_bot.url, "poll_timeout": 0,
                            "set_commands": False}},
        "routes": [{"name": "ops", "mesh": "dev", "topic": "general", "direction": "out",
                    "binds": [{"gateway": "tg", "chat": FORUM, "thread": "77"}]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    alice = await member("dev_alice")
    await alice.post_topic("general", "deploy done")
    await wait_until(lambda: fake_bot.sent, 20, "sendMessage")
    (m,) = fake_bot.sent
    assert str(m["chat_id"]) == FORUM
    assert str(m.get("message_thread_id")) == "77", m
    assert m["text"] == "alice: deploy done"


async def test_unauthorised_telegram_user_never_reaches_the_mesh(file_app, dev_broker, member, fake_bot):
    got: list[Any] = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")
    _client, runtime, _ = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"tg": {"type": "telegram", "token": TOKEN, "api_base": fake_bot.url, "poll_timeout": 0,
                            "set_commands": False}},
        "routes": [{"name": "ops", "mesh": "dev", "topic": "general", "direction": "in",
                    "binds": [{"gateway": "tg", "chat": GROUP, "options": {"allow_users": ["@grace"]}}]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    fake_bot.add_message(GROUP, "intruder says hi", from_id=111, username="mallory")
    fake_bot.add_message(GROUP, "grace says hi", from_id=222, username="grace")
    await wait_until(lambda: any("grace says hi" in i.text for i in got), 20, "the authorised message at bob")
    await asyncio.sleep(1.0)  # the unauthorised one, sent first, had every chance to arrive
    assert not any("intruder" in i.text for i in got)
    rows = dev_broker.topic_messages(topic_id=dev_broker.default_mesh.general_topic_id)
    assert len(rows) == 1, "exactly one post (the authorised one) reached the broker"


async def test_mesh_reply_to_a_forum_topic_message_replies_to_it_in_telegram(file_app, dev_broker, member, fake_bot):
    got: list[Any] = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")
    _client, runtime, _ = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"tg": {"type": "telegram", "token": TOKEN, "api_base": fake_bot.url, "poll_timeout": 0,
                            "set_commands": False}},
        "routes": [{"name": "ops", "mesh": "dev", "topic": "general", "direction": "both",
                    "binds": [{"gateway": "tg", "chat": FORUM}]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    user_msg = fake_bot.add_message(FORUM, "anyone on call?", from_id=222, username="grace",
                                    message_thread_id=77, is_topic_message=True)
    await wait_until(lambda: any("anyone on call?" in i.text for i in got), 20, "the forum message in the mesh")
    (question,) = [i for i in got if "anyone on call?" in i.text]
    await bob.post_topic("general", "I am", reply_to_id=question.id)
    await wait_until(lambda: fake_bot.sent, 20, "the mesh reply in Telegram")
    (reply,) = fake_bot.sent
    assert "I am" in reply["text"]
    params = reply.get("reply_parameters")
    params = json.loads(params) if isinstance(params, str) else (params or {})
    assert params.get("message_id") == user_msg["message_id"], reply
