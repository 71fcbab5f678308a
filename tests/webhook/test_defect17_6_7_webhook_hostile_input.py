"""Issue 17 items 6 and 7 on the generic webhook gateway, mounted as in production (behind the core's
error middleware, on a real loopback socket): hostile header values are a 401 with one WARNING line,
bad bodies a 400 with the reason, and a client that hangs up mid-body one quiet INFO line; never a
500 or an ERROR traceback, and nothing is submitted."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from claudemesh_gateway import Address, Binding
from claudemesh_gateway.plugins.webhook.gateway import WebhookBindingOptions, WebhookConfig, WebhookGateway
from claudemesh_gateway.plugins.webhook.signature import sign
from claudemesh_gateway.testing import RecordingContext

SECRET = "s3cret-s3cret-s3cret"
PATH = "/gateways/wh/in1"


class Served:
    def __init__(self, port: int, ctx: RecordingContext) -> None:
        self.port, self.ctx = port, ctx


@pytest.fixture
async def served(raw_http):
    async with aiohttp.ClientSession() as http:
        ctx = RecordingContext("wh", http, [Binding(route="room", address=Address("wh", "in1"), direction="both",
                                                    options=WebhookBindingOptions())])
        gw = WebhookGateway("wh", WebhookConfig(secret=SECRET), ctx)
        await gw.start()
        async with raw_http.serve(raw_http.mount(gw)) as port:
            yield Served(port, ctx)
        await gw.stop()


def _body() -> bytes:
    return json.dumps({"id": "h-1", "sender": "ci", "text": "hello"}).encode()


def _problems(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return errors, warnings


@pytest.mark.parametrize("case", ["400-digit timestamp", "non-ASCII signature", "non-ASCII timestamp"])
async def test_defect17_6_hostile_header_values_are_401_with_one_warning(served, raw_http, caplog, case):
    caplog.set_level(logging.INFO)
    body = _body()
    now = str(int(time.time()))
    ts: bytes = now.encode()
    sig: bytes = sign(SECRET, now, body).encode()
    if case == "400-digit timestamp":
        ts = b"9" * 400
    elif case == "non-ASCII signature":
        sig = sig[:-2] + b"\xff\xfe"
    else:
        ts = now.encode() + b"\xc3"
    status, _, answer = await raw_http.request(served.port, "POST", PATH, [
        ("Content-Type", "application/json"), ("X-Claudemesh-Timestamp", ts), ("X-Claudemesh-Signature", sig),
    ], body)
    assert status == 401, answer
    errors, warnings = _problems(caplog)
    assert errors == [] and len(warnings) == 1, (errors, warnings)
    assert served.ctx.attempts == []


async def test_defect17_7_deeply_nested_json_behind_a_valid_signature_is_400(served, raw_http, caplog):
    caplog.set_level(logging.INFO)
    body = b'{"sender": "x", "text": "y", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    now = str(int(time.time()))
    status, _, answer = await raw_http.request(served.port, "POST", PATH, [
        ("Content-Type", "application/json"), ("X-Claudemesh-Timestamp", now),
        ("X-Claudemesh-Signature", sign(SECRET, now, body)),
    ], body)
    assert status == 400, answer
    assert _problems(caplog)[0] == []
    assert served.ctx.attempts == []


async def test_defect17_7_client_hanging_up_mid_body_is_one_quiet_line(served, raw_http, caplog):
    caplog.set_level(logging.INFO)
    body = json.dumps({"sender": "ci", "text": "x" * 50_000}).encode()
    now = str(int(time.time()))
    await raw_http.hang_up_mid_body(served.port, "POST", PATH, [
        ("Content-Type", "application/json"), ("X-Claudemesh-Timestamp", now),
        ("X-Claudemesh-Signature", sign(SECRET, now, body)),
    ], body, sent=1000)
    for _ in range(100):  # until the server has noticed (bounded)
        if any("went away" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    went = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(went) == 1 and went[0].levelno == logging.INFO and went[0].exc_info is None
    errors, warnings = _problems(caplog)
    assert errors == [] and warnings == []
    assert not any(r.exc_info for r in caplog.records)
    assert served.ctx.attempts == []
    # and the gateway still takes the next, good request
    good = _body()
    status, _, answer = await raw_http.request(served.port, "POST", PATH, [
        ("Content-Type", "application/json"), ("X-Claudemesh-Timestamp", now),
        ("X-Claudemesh-Signature", sign(SECRET, now, good))], good)
    assert status == 200 and len(served.ctx.submitted) == 1, answer
