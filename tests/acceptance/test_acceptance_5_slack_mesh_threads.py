"""#5 "threads map both ways" between the MESH and Slack, through the whole app on the dev broker
(tests/slack covers Slack<->Slack threads through the app and mesh replies at the gateway's unit
level only). Slack in Events API mode with a minimal fake Web API on loopback:

mesh post (alice) -> Slack message T1; a Slack thread reply under T1 -> a mesh post whose
replyToId is alice's post; a mesh reply to that post -> Slack, in T1's thread."""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
from typing import Any

import pytest
from aiohttp import web
from claudemesh_gateway.plugins.slack.signature import sign

from .conftest import FAST_POLL, wait_until

BOT_TOKEN = "xoxb-1111-2222-acceptancebot"
SIGNING_SECRET = "acceptance-slack-signing-secret-01"
TEAM, BOT_USER, BOT_ID, APP_ID = "T0TEAM", "UBOT", "BBOT", "A0APP"


class FakeSlackAPI:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._ts = itertools.count(1)

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.read()
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(json.loads(raw or b"{}"))
        elif raw:
            params.update({k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()})
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method == "auth.test":
            return web.json_response({"ok": True, "user_id": BOT_USER, "bot_id": BOT_ID, "team_id": TEAM,
                                      "user": "meshbot", "team": "Test"})
        if method == "chat.postMessage":
            ts = f"1700001{next(self._ts):03d}.000100"
            self.posts.append({**params, "ts": ts})
            return web.json_response({"ok": True, "channel": params.get("channel"), "ts": ts,
                                      "message": {"text": params.get("text")}})
        if method == "users.info":
            return web.json_response({"ok": True, "user": {"id": params.get("user"), "name": "grace.h",
                                                           "real_name": "Grace Hopper",
                                                           "profile": {"display_name": "Grace Hopper",
                                                                       "real_name": "Grace Hopper"}}})
        if method == "conversations.info":
            return web.json_response({"ok": True, "channel": {"id": params.get("channel"), "name": "ops"}})
        return web.json_response({"ok": False, "error": "unknown_method"})


@pytest.fixture
async def fake_slack(aiohttp_server):
    api = FakeSlackAPI()
    app = web.Application()
    app.router.add_route("*", "/api/{method}", api.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    api.url = str(server.make_url("")).rstrip("/")
    return api


def event(text: str, *, ts: str, thread_ts: str | None = None, event_id: str) -> bytes:
    ev = {"type": "message", "channel": "C1", "user": "U1", "text": text, "ts": ts, "team": TEAM,
          "channel_type": "channel"}
    if thread_ts:
        ev["thread_ts"] = thread_ts
    return json.dumps({"token": "legacy", "team_id": TEAM, "api_app_id": APP_ID, "type": "event_callback",
                       "event_id": event_id, "event_time": int(time.time()), "event": ev,
                       "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}]}).encode()


async def thread_reply_into_the_mesh(file_app, dev_broker, member, fake_slack) -> tuple[Any, Any, str, Any]:
    """alice posts; Slack copy T1; a Slack thread reply under T1 reaches the mesh. Returns
    (alice, the Slack copy, alice's post id, the mesh copy of the Slack reply as bob saw it)."""
    client, runtime, _ = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"slack": {"type": "slack", "mode": "events", "bot_token": BOT_TOKEN,
                               "signing_secret": SIGNING_SECRET, "api_base": f"{fake_slack.url}/api/"}},
        "routes": [{"name": "ops", "mesh": "dev", "topic": "general", "direction": "both",
                    "encryption": "hkdf",  # v3, chosen explicitly (the default auto posts v1 here)
                    "binds": [{"gateway": "slack", "chat": "C1"}]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    got: list[Any] = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")
    alice = await member("dev_alice")

    question_id = await alice.post_topic("general", "who broke the build?")
    await wait_until(lambda: fake_slack.posts, 20, "the Slack copy")
    (copy,) = fake_slack.posts
    assert copy["channel"] == "C1" and "who broke the build?" in copy["text"] and not copy.get("thread_ts")

    body = event("it was me", ts="1700002000.000100", thread_ts=copy["ts"], event_id="Ev-thread-1")
    stamp = str(int(time.time()))
    resp = await client.post("/gateways/slack/events", data=body, headers={
        "Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": sign(SIGNING_SECRET, stamp, body)})
    assert resp.status == 200, await resp.text()
    await wait_until(lambda: any("it was me" in i.text for i in got), 20, "the Slack thread reply in the mesh")
    (answer,) = [i for i in got if "it was me" in i.text]
    return alice, copy, question_id, answer


async def test_slack_thread_reply_becomes_a_mesh_reply_to_the_mapped_post(file_app, dev_broker, member, fake_slack):
    _, _, question_id, answer = await thread_reply_into_the_mesh(file_app, dev_broker, member, fake_slack)
    assert answer.reply_to_id == question_id, "a Slack thread reply must become a mesh reply to the mapped post"
    assert answer.body_version == 3


async def test_mesh_reply_to_a_slack_thread_reply_lands_in_that_thread(file_app, dev_broker, member, fake_slack):
    alice, copy, _, answer = await thread_reply_into_the_mesh(file_app, dev_broker, member, fake_slack)
    await alice.post_topic("general", "thanks for owning it", reply_to_id=answer.id)
    await wait_until(lambda: len(fake_slack.posts) == 2, 20, "the mesh reply in Slack")
    reply = fake_slack.posts[1]
    assert "thanks for owning it" in reply["text"]
    assert reply.get("thread_ts") == copy["ts"], "a mesh reply must land in the Slack thread"
