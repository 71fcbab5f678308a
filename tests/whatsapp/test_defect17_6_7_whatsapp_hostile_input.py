"""Issue 17 items 6 and 7 on the Twilio (WhatsApp) webhooks, mounted as in production (error
middleware, real socket): an X-Twilio-Signature with bytes that are not UTF-8 is a 401 with one
WARNING line (it was a 500 with a UnicodeEncodeError traceback); a correctly signed JSON body nested
absurdly deep, or not an object, is a 400 (deep nesting was a 500 with a RecursionError traceback).
Nothing is submitted, and a good webhook still flows afterwards."""

from __future__ import annotations

import hashlib
import logging
import urllib.parse

import pytest


@pytest.fixture
async def served(wa, raw_http):
    async with raw_http.serve(raw_http.mount(wa.gateway)) as port:
        yield port, wa


def _levels(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    return ([r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR],
            [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])


@pytest.mark.parametrize("leaf", ["inbound", "status"])
async def test_defect17_6_non_utf8_signature_is_401_with_one_warning(served, wh, raw_http, caplog, leaf):
    port, wa = served
    caplog.set_level(logging.INFO)
    params = wh.inbound_params()
    good = wh.sign(params, f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/{leaf}")
    body = urllib.parse.urlencode(params).encode()
    status, _, answer = await raw_http.request(port, "POST", f"/gateways/{wh.NAME}/{leaf}", [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Twilio-Signature", good.encode()[:-2] + b"\xff\xfe")], body)
    assert status == 401, answer
    errors, warnings = _levels(caplog)
    assert errors == [] and len(warnings) == 1, (errors, warnings)
    assert wa.ctx.attempts == []


@pytest.mark.parametrize(("body", "reason"), [
    (b"[" * 100_000 + b"]" * 100_000, b"nested deeper than"),
    (b'{"MessageSid": "SM1", "x": ' + b"[" * 200 + b"]" * 200 + b"}", b"nested deeper than"),
    (b'["not", "an", "object"]', b"must be a JSON object"),
])
async def test_defect17_7_signed_json_that_is_nested_or_not_an_object_is_400(served, wh, raw_http, caplog,
                                                                             body, reason):
    port, wa = served
    caplog.set_level(logging.INFO)
    query = f"bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = wh.sign({}, f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/status?{query}")
    status, _, answer = await raw_http.request(port, "POST", f"/gateways/{wh.NAME}/status?{query}", [
        ("Content-Type", "application/json"), ("X-Twilio-Signature", signature)], body)
    assert status == 400, answer
    assert reason in answer
    assert _levels(caplog)[0] == [] and not any(r.exc_info for r in caplog.records)
    assert wa.ctx.attempts == []
    params = wh.inbound_params(body="after the bad ones")
    resp = await wa.inbound(params)
    assert resp.status == 200 and [m.text for m in wa.ctx.submitted] == ["after the bad ones"]


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
async def test_issue16_oversize_webhook_is_413(served, wh, raw_http, content_type):
    port, wa = served
    body = b"Body=" + b"x" * (2 * 1024 * 1024)
    status, _, _ = await raw_http.request(port, "POST", f"/gateways/{wh.NAME}/inbound", [
        ("Content-Type", content_type), ("X-Twilio-Signature", "c2lnbmF0dXJl")], body)
    assert status == 413 and wa.ctx.attempts == []
