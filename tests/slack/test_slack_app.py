"""The Slack gateway inside the real core app (routing, attribution, message map, delivery engine).

A route binding Slack channels to each other relays between them through the core, so these
tests need no mesh; the mesh end-to-end tests are in test_slack_mesh_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from claudemesh_gateway import DeliveryFailed, Event, hookimpl
from claudemesh_gateway.plugins.slack.signature import sign
from claudemesh_gateway.testing import build_test_app, wait_until


class Observer:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def track_event(self, event: Event) -> None:
        self.events.append(event)




@pytest.fixture
async def app(tmp_path, fake_slack, sk):
    clients = []

    async def make(binds=("C1", "C2"), mode="socket", route_extra=None, bind_options=None, **gw_extra):
        gw = {
            "type": "slack",
            "bot_token": sk.BOT_TOKEN,
            "api_base": f"{fake_slack.url}/api/",
            "mode": mode,
            **gw_extra,
        }
        if mode == "socket":
            gw["app_token"] = sk.APP_TOKEN
        else:
            gw["signing_secret"] = sk.SIGNING_SECRET
        for c in binds:
            fake_slack.channels.setdefault(c, {"id": c, "name": c.lower()})
        cfg = {
            "gateways": {"slack": gw},
            "routes": [
                {
                    "name": "room",
                    **(route_extra or {}),
                    "binds": [
                        {"gateway": "slack", "chat": c, "options": (bind_options or {}).get(c, {})}
                        for c in binds
                    ],
                }
            ],
        }
        observer = Observer()
        state = tmp_path / f"s{len(clients)}"
        state.mkdir()
        client, runtime = await build_test_app(cfg, state_dir=state, plugins=[("slack-observer", observer)])
        clients.append(client)
        if mode == "socket":
            await fake_slack.wait_socket()
        return client, runtime, observer

    yield make
    for c in reversed(clients):
        await c.close()


async def test_relay_with_attribution_and_no_live_mentions(app, fake_slack, sk):
    await app()
    await fake_slack.push(sk.event_callback(sk.message_event("ship it <!channel> <!here> & <@U2> @everyone")))
    [post] = await fake_slack.wait_posts("C2", 1)
    text = post["text"]
    assert text.startswith("alice: ship it ")
    assert "<" not in text and ">" not in text  # nothing Slack could read as markup
    assert "@channel" not in text and "@here" not in text and "@everyone" not in text  # defanged by the core
    assert "&amp; @Bob B" in text
    await asyncio.sleep(0.2)
    assert fake_slack.posts["C1"] == []  # never echoed to its origin


async def test_threads_and_edits_and_deletes_follow_the_message_map(app, fake_slack, sk):
    await app()
    orig = "1700000100.000100"
    await fake_slack.push(sk.event_callback(sk.message_event("question", ts=orig), event_id="E1"))
    [copy] = await fake_slack.wait_posts("C2", 1)
    assert "thread_ts" not in copy
    # a thread reply in C1 -> a reply in the copy's thread in C2
    await fake_slack.push(
        sk.event_callback(sk.message_event("follow-up", ts="1700000101.0", thread_ts=orig), event_id="E2")
    )
    posts = await fake_slack.wait_posts("C2", 2)
    assert posts[1]["thread_ts"] == copy["ts"] and posts[1]["text"] == "alice: follow-up"
    # a thread reply in C2 under the copy -> into the original's thread in C1
    await fake_slack.push(
        sk.event_callback(
            sk.message_event("answer", user="U2", channel="C2", ts="1700000102.0", thread_ts=copy["ts"]),
            event_id="E3",
        )
    )
    [back] = await fake_slack.wait_posts("C1", 1)
    assert back["thread_ts"] == orig and back["text"] == "Bob B: answer"
    # an edit of the original -> chat.update of the copy
    changed = {
        "type": "message",
        "subtype": "message_changed",
        "channel": "C1",
        "ts": "1700000200.0",
        "message": {
            "type": "message",
            "user": "U1",
            "text": "question (fixed)",
            "ts": orig,
            "edited": {"user": "U1", "ts": "1700000199.0"},
        },
        "previous_message": {"type": "message", "user": "U1", "text": "question", "ts": orig},
    }
    await fake_slack.push(sk.event_callback(changed, event_id="E4"))
    await wait_until(lambda: any(u["ts"] == copy["ts"] for u in fake_slack.updates))
    upd = [u for u in fake_slack.updates if u["ts"] == copy["ts"]][-1]
    assert upd["channel"] == "C2" and upd["text"] == "alice: question (fixed)"
    # a delete of the original -> chat.delete of the copy
    deleted = {
        "type": "message",
        "subtype": "message_deleted",
        "channel": "C1",
        "ts": "1700000300.0",
        "deleted_ts": orig,
        "previous_message": {"type": "message", "user": "U1", "text": "x", "ts": orig},
    }
    await fake_slack.push(sk.event_callback(deleted, event_id="E5"))
    await wait_until(lambda: {"channel": "C2", "ts": copy["ts"]} in fake_slack.deletes)


async def test_burst_into_one_channel_is_complete_and_paced(app, fake_slack, sk):
    await app()
    for i in range(8):
        await fake_slack.push(
            sk.event_callback(sk.message_event(f"burst {i}", ts=f"17000001{i:02d}.0"), event_id=f"B{i}")
        )
    await fake_slack.wait_posts("C2", 8, within=25)
    assert fake_slack.texts("C2") == [f"alice: burst {i}" for i in range(8)]  # complete and in order
    assert fake_slack.rate_violations == []  # ~1/s per channel with burst 3 held


async def test_429_on_one_channel_leaves_another_flowing(app, fake_slack, sk):
    _, _, obs = await app(binds=("C1", "C2", "C3"))
    fake_slack.fail_429["C2"].append(2)
    await fake_slack.push(sk.event_callback(sk.message_event("one", ts="1700000001.0"), event_id="E1"))
    await fake_slack.push(sk.event_callback(sk.message_event("two", ts="1700000002.0"), event_id="E2"))
    await fake_slack.wait_posts("C3", 2)
    assert fake_slack.texts("C2") == []  # C2 paused for Retry-After; C3 was not held up
    await fake_slack.wait_posts("C2", 2, within=15)
    assert fake_slack.texts("C2") == ["alice: one", "alice: two"]  # order kept after the pause
    assert not [e for e in obs.events if isinstance(e, DeliveryFailed) and e.permanent]


async def test_own_posts_echoed_by_slack_never_come_back(app, fake_slack, sk):
    fake_slack.echo = True
    await app(ignore_bots=False)
    await fake_slack.push(sk.event_callback(sk.message_event("hello"), event_id="E1"))
    await fake_slack.wait_posts("C2", 1)
    await wait_until(lambda: len(fake_slack.echoed) >= 1)
    await asyncio.sleep(0.5)  # time for an echo to loop, if it could
    assert fake_slack.texts("C2") == ["alice: hello"]
    assert fake_slack.posts["C1"] == []
    assert len(fake_slack.acks) >= 2  # the echo was received (and acked), just not relayed


async def test_events_api_mode_through_the_app(app, fake_slack, sk):
    client, _, _ = await app(mode="events")
    body = json.dumps(sk.event_callback(sk.message_event("via events"))).encode()
    stamp = str(int(time.time()))
    forged = await client.post(
        "/gateways/slack/events",
        data=body,
        headers={"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sign("wrong", stamp, body)},
    )
    assert forged.status == 401
    ok = await client.post(
        "/gateways/slack/events",
        data=body,
        headers={
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(sk.SIGNING_SECRET, stamp, body),
        },
    )
    assert ok.status == 200
    again = await client.post(
        "/gateways/slack/events",
        data=body,
        headers={
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(sk.SIGNING_SECRET, stamp, body),
            "X-Slack-Retry-Num": "1",
            "X-Slack-Retry-Reason": "http_timeout",
        },
    )
    assert again.status == 200
    await fake_slack.wait_posts("C2", 1)
    await asyncio.sleep(0.3)
    assert fake_slack.texts("C2") == ["alice: via events"]  # the forged one never, the retry once


async def test_mass_mentions_when_route_and_binding_allow(app, fake_slack, sk):
    await app(route_extra={"allow_mass_mentions": True}, bind_options={"C2": {"allow_mass_mentions": True}})
    await fake_slack.push(sk.event_callback(sk.message_event("deploy <!here>")))
    [post] = await fake_slack.wait_posts("C2", 1)
    assert post["text"] == "alice: deploy <!here>"


async def test_slash_command_is_answered_by_the_core_in_the_channel(app, fake_slack, sk):
    await app()
    cmd = {
        "command": "/mesh",
        "text": "help",
        "user_id": "U1",
        "user_name": "alice",
        "channel_id": "C1",
        "team_id": sk.TEAM,
        "trigger_id": "trig-1",
    }
    await fake_slack.push(cmd, kind="slash_commands")
    [reply] = await fake_slack.wait_posts("C1", 1)
    assert (
        "/topics" in reply["text"] and "/dm &lt;peer&gt; &lt;text&gt;" in reply["text"]
    )  # escaped for Slack
    await asyncio.sleep(0.2)
    assert fake_slack.posts["C2"] == []  # a command is answered, not relayed
