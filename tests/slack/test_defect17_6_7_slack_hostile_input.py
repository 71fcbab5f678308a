"""Issue 17 items 6 and 7 on Slack's Events API, mounted as in production (error middleware, real
socket): a 400-digit X-Slack-Request-Timestamp is a 401 with one WARNING line (it was a 500 with an
OverflowError traceback); behind a valid signature, deeply nested JSON or an ``event`` that is not an
object is a 400 with the reason (it was a 500 with a traceback); a client that hangs up mid-body is one
INFO line. Nothing is submitted, and good events still flow afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from claudemesh_gateway.plugins.slack.signature import sign

PATH = "/gateways/slack/events"


@pytest.fixture
async def served(make_gateway, raw_http):
    gw = await make_gateway(mode="events")
    async with raw_http.serve(raw_http.mount(gw)) as port:
        yield port, gw


def _signed(secret: str, body: bytes, ts: str | None = None) -> list[tuple[str, bytes | str]]:
    stamp = ts or str(int(time.time()))
    return [("Content-Type", "application/json"), ("X-Slack-Request-Timestamp", stamp),
            ("X-Slack-Signature", sign(secret, stamp, body))]


def _levels(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    return ([r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR],
            [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])


@pytest.mark.parametrize("case", ["400-digit timestamp", "non-ASCII signature", "non-ASCII timestamp"])
async def test_defect17_6_hostile_header_values_are_401_with_one_warning(served, sk, raw_http, caplog, case):
    port, gw = served
    caplog.set_level(logging.INFO)
    body = json.dumps(sk.event_callback(sk.message_event("forged"))).encode()
    headers = _signed(sk.SIGNING_SECRET, body)
    if case == "400-digit timestamp":
        headers[1] = ("X-Slack-Request-Timestamp", "9" * 400)
    elif case == "non-ASCII signature":
        headers[2] = ("X-Slack-Signature", headers[2][1].encode()[:-1] + b"\xff")
    else:
        headers[1] = ("X-Slack-Request-Timestamp", headers[1][1].encode() + b"\xd9\xa3")  # an Arabic-Indic digit
    status, _, answer = await raw_http.request(port, "POST", PATH, headers, body)
    assert status == 401, answer
    errors, warnings = _levels(caplog)
    assert errors == [] and len(warnings) == 1, (errors, warnings)
    assert gw.ctx.attempts == []


def _nested(sk) -> bytes:
    return json.dumps(sk.event_callback(sk.message_event("deep"))).encode()[:-1] + (
        b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize("case", ["nested", "event is a string", "event is a list", "text is an object"])
async def test_defect17_7_bad_bodies_behind_a_valid_signature_are_400(served, sk, raw_http, caplog, case):
    port, gw = served
    caplog.set_level(logging.INFO)
    if case == "nested":
        body = _nested(sk)
    else:
        payload = sk.event_callback(sk.message_event("bad"))
        if case == "event is a string":
            payload["event"] = "message"
        elif case == "event is a list":
            payload["event"] = [1, 2]
        else:
            payload["event"]["text"] = {"not": "text"}
        body = json.dumps(payload).encode()
    status, _, answer = await raw_http.request(port, "POST", PATH, _signed(sk.SIGNING_SECRET, body), body)
    assert status == 400, answer
    assert json.loads(answer)["error"]
    assert _levels(caplog)[0] == [] and not any(r.exc_info for r in caplog.records)
    assert gw.ctx.attempts == []
    good = json.dumps(sk.event_callback(sk.message_event("still fine"), event_id="Ev-good")).encode()
    status, _, _ = await raw_http.request(port, "POST", PATH, _signed(sk.SIGNING_SECRET, good), good)
    assert status == 200 and [m.text for m in gw.ctx.submitted] == ["still fine"]


async def test_defect17_7_client_hanging_up_mid_body_is_one_quiet_line(served, sk, raw_http, caplog):
    port, gw = served
    caplog.set_level(logging.INFO)
    body = json.dumps(sk.event_callback(sk.message_event("x" * 50_000))).encode()
    await raw_http.hang_up_mid_body(port, "POST", PATH, _signed(sk.SIGNING_SECRET, body), body, sent=1000)
    for _ in range(100):  # until the server has noticed (bounded)
        if any("went away" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    went = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(went) == 1 and went[0].levelno == logging.INFO
    assert _levels(caplog) == ([], []) and not any(r.exc_info for r in caplog.records)
    assert gw.ctx.attempts == []


@pytest.mark.parametrize("path", [PATH, "/gateways/slack/commands"])
async def test_issue16_oversize_request_is_413(served, sk, raw_http, path):
    port, gw = served
    body = b'{"type": "event_callback", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, _, _ = await raw_http.request(port, "POST", path, _signed(sk.SIGNING_SECRET, body), body)
    assert status == 413 and gw.ctx.attempts == []
