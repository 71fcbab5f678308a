"""Issue 17 items 6 and 7 on the Telegram webhook, mounted as in production (error middleware, real
socket): a secret-token header with bytes that are not UTF-8 is a 401 with one WARNING line (it was a
500 with a UnicodeEncodeError traceback), and a deeply nested body behind the right token is a 400
naming the reason (it was a 500 with a RecursionError traceback). Nothing is submitted."""

from __future__ import annotations

import json
import logging

import pytest

SECRET = "s3cret_webhook-Token"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
PATH = "/gateways/tg/webhook"


@pytest.fixture
async def served(make_gateway, tg_binding, raw_http):
    gw, ctx = make_gateway(bindings=[tg_binding(-100600)], mode="webhook", webhook_secret=SECRET,
                           public_url="https://gw.example.org/")
    await gw.start()
    async with raw_http.serve(raw_http.mount(gw)) as port:
        yield port, ctx


def _levels(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    return ([r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR],
            [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])


@pytest.mark.parametrize("token", [SECRET.encode()[:-1] + b"\xff", b"\xc3\x28" + SECRET.encode()])
async def test_defect17_6_non_utf8_secret_token_is_401_with_one_warning(served, fake_tg, raw_http, caplog, token):
    port, ctx = served
    caplog.set_level(logging.INFO)
    body = json.dumps(fake_tg.make_update(fake_tg.make_message(-100600, "forged"))).encode()
    status, _, answer = await raw_http.request(port, "POST", PATH, [
        ("Content-Type", "application/json"), (HEADER, token)], body)
    assert status == 401, answer
    errors, warnings = _levels(caplog)
    assert errors == [] and len(warnings) == 1, (errors, warnings)
    assert ctx.attempts == []


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"update_id": 1, "message": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    b'{"update_id": 1, "x": ' + b"[" * 100 + b"]" * 100 + b"}",  # parses, but deeper than the limit
])
async def test_defect17_7_deeply_nested_update_is_400_with_a_reason(served, raw_http, caplog, body):
    port, ctx = served
    caplog.set_level(logging.INFO)
    status, _, answer = await raw_http.request(port, "POST", PATH, [
        ("Content-Type", "application/json"), (HEADER, SECRET)], body)
    assert status == 400, answer
    assert b"nested deeper than" in answer
    assert _levels(caplog)[0] == [] and not any(r.exc_info for r in caplog.records)
    assert ctx.attempts == []


async def test_defect17_7_a_good_update_still_flows_after_bad_ones(served, fake_tg, raw_http):
    port, ctx = served
    await raw_http.request(port, "POST", PATH, [(HEADER, b"\xff")], b"{}")
    await raw_http.request(port, "POST", PATH, [(HEADER, SECRET)], b"[" * 5000)
    body = json.dumps(fake_tg.make_update(fake_tg.make_message(-100600, "real"))).encode()
    status, _, _ = await raw_http.request(port, "POST", PATH, [
        ("Content-Type", "application/json"), (HEADER, SECRET)], body)
    assert status == 200 and [m.text for m in ctx.submitted] == ["real"]


async def test_issue16_oversize_update_is_413(served, raw_http):
    port, ctx = served
    body = b'{"update_id": 1, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, _, _ = await raw_http.request(port, "POST", PATH, [("Content-Type", "application/json"),
                                                               (HEADER, SECRET)], body)
    assert status == 413 and ctx.attempts == []
