"""Inbound over the Events API: signed HTTP POSTs to /gateways/<name>/events (and /commands)."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from aiohttp import web
from claudemesh_gateway import GatewayState
from claudemesh_gateway.plugins.slack.signature import SignatureVerifier, sign


@pytest.fixture
async def events(make_gateway, aiohttp_client):
    gw = await make_gateway(mode="events")
    app = web.Application()
    sub = web.Application()
    sub.add_routes(gw.web_routes())
    app.add_subapp(f"/gateways/{gw.name}/", sub)
    client = await aiohttp_client(app)
    client.gw = gw
    return client


def _signed(secret: str, body: bytes, *, ts: int | None = None, **headers: str) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": sign(secret, stamp, body),
        "Content-Type": "application/json",
        **headers,
    }


async def test_signed_event_is_submitted_before_200(events, sk):
    body = json.dumps(sk.event_callback(sk.message_event("hello from events"))).encode()
    resp = await events.post("/gateways/slack/events", data=body, headers=_signed(sk.SIGNING_SECRET, body))
    assert resp.status == 200
    [msg] = events.gw.ctx.submitted  # already there when the 200 arrived
    assert msg.text == "hello from events" and msg.sender == "alice"
    assert events.gw.state == GatewayState.CONNECTED


@pytest.mark.parametrize(
    "tamper", ["bad_signature", "wrong_secret", "stale", "future", "missing", "garbage_ts", "body_changed"]
)
async def test_forged_or_stale_request_rejected_nothing_submitted(events, sk, tamper):
    body = json.dumps(sk.event_callback(sk.message_event("evil <!channel>"))).encode()
    headers = _signed(sk.SIGNING_SECRET, body)
    if tamper == "bad_signature":
        headers["X-Slack-Signature"] = "v0=" + "0" * 64
    elif tamper == "wrong_secret":
        headers = _signed("not-the-secret", body)
    elif tamper == "stale":
        headers = _signed(sk.SIGNING_SECRET, body, ts=int(time.time()) - 301)
    elif tamper == "future":
        headers = _signed(sk.SIGNING_SECRET, body, ts=int(time.time()) + 400)
    elif tamper == "missing":
        headers = {"Content-Type": "application/json"}
    elif tamper == "garbage_ts":
        headers["X-Slack-Request-Timestamp"] = "12abc"
    elif tamper == "body_changed":
        body = body.replace(b"evil", b"EVIL")
    resp = await events.post("/gateways/slack/events", data=body, headers=headers)
    assert resp.status == 401
    assert events.gw.ctx.submitted == []


async def test_unsigned_garbage_is_rejected_before_parsing(events):
    resp = await events.post(
        "/gateways/slack/events", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 401


async def test_url_verification_challenge(events, sk):
    body = json.dumps(
        {
            "token": "t",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    ).encode()
    resp = await events.post("/gateways/slack/events", data=body, headers=_signed(sk.SIGNING_SECRET, body))
    assert resp.status == 200
    assert (await resp.json()) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


async def test_retried_delivery_processed_once(events, sk):
    body = json.dumps(sk.event_callback(sk.message_event("once"), event_id="EvRetry")).encode()
    r1 = await events.post("/gateways/slack/events", data=body, headers=_signed(sk.SIGNING_SECRET, body))
    retry_headers = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    r2 = await events.post(
        "/gateways/slack/events", data=body, headers=_signed(sk.SIGNING_SECRET, body, **retry_headers)
    )
    # the same message under a different event id (e.g. re-sent after an app reinstall) is still one message
    body3 = json.dumps(sk.event_callback(sk.message_event("once"), event_id="EvOther")).encode()
    r3 = await events.post("/gateways/slack/events", data=body3, headers=_signed(sk.SIGNING_SECRET, body3))
    assert (r1.status, r2.status, r3.status) == (200, 200, 200)
    assert [m.text for m in events.gw.ctx.submitted] == ["once"]


async def test_submit_failure_answers_500_so_slack_retries(events, sk):
    events.gw.ctx.fail_submit = RuntimeError("store down")
    body = json.dumps(sk.event_callback(sk.message_event("later"), event_id="EvF")).encode()
    resp = await events.post("/gateways/slack/events", data=body, headers=_signed(sk.SIGNING_SECRET, body))
    assert resp.status == 500
    events.gw.ctx.fail_submit = None
    resp = await events.post(
        "/gateways/slack/events",
        data=body,
        headers=_signed(sk.SIGNING_SECRET, body, **{"X-Slack-Retry-Num": "1"}),
    )
    assert resp.status == 200
    assert [m.text for m in events.gw.ctx.submitted] == ["later"]


async def test_signed_slash_command(events, sk):
    form = {
        "command": "/mesh",
        "text": "peers",
        "team_id": sk.TEAM,
        "channel_id": "C1",
        "user_id": "U1",
        "user_name": "alice",
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
    }
    body = urllib.parse.urlencode(form).encode()
    headers = _signed(sk.SIGNING_SECRET, body, **{"Content-Type": "application/x-www-form-urlencoded"})
    resp = await events.post("/gateways/slack/commands", data=body, headers=headers)
    assert resp.status == 200
    [msg] = events.gw.ctx.submitted
    assert msg.is_command and msg.text == "/peers" and msg.sender == "alice"
    bad = dict(headers, **{"X-Slack-Signature": "v0=" + "1" * 64})
    resp = await events.post("/gateways/slack/commands", data=body, headers=bad)
    assert resp.status == 401 and len(events.gw.ctx.submitted) == 1


def test_signature_matches_slack_documented_example():
    # the worked example from Slack's "Verifying requests from Slack" page
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
        b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
        b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554"
        b"%2F96rGlfmibIGlgcZRskXaIFfN"
        b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert sign("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body) == expected
    v = SignatureVerifier("8f742231b10e8888abcd99yyyzzz85a5", clock=lambda: 1531420618 + 299)
    headers = {"X-Slack-Request-Timestamp": "1531420618", "X-Slack-Signature": expected}
    assert v.verify(headers, body)
    assert not SignatureVerifier("8f742231b10e8888abcd99yyyzzz85a5", clock=lambda: 1531420618 + 301).verify(
        headers, body
    )
