"""Issue 17 items 6 and 7 on the core's own endpoints, through the real app served as ``run`` serves
it: the admin API (a non-UTF-8 Authorization header; deeply nested JSON behind a valid token) and the
dev sink (hostile signature headers; deeply nested JSON; a client hanging up mid-body). Each was a 500
with an ERROR traceback; now a 4xx with the reason (the sink records a bad signature as BAD) and at
most one quiet log line."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import jwt
import pytest
from claudemesh_gateway.app import create_app
from claudemesh_gateway.plugin_manager import make_plugin_manager
from claudemesh_gateway.plugins.webhook.signature import sign
from claudemesh_gateway.settings import settings_from_dict

JWT_SECRET = "defect17-admin-jwt-secret-0123456789abcdef"
HOOK_SECRET = "defect17-webhook-secret-0123456789"
AUD = "claudemesh-gateway"


@pytest.fixture
async def served(tmp_path, raw_http):
    settings = settings_from_dict({
        "server": {"state_dir": str(tmp_path), "shutdown_timeout": 2.0},
        "dev_broker": {"embedded": True},  # mounts /-/dev/sink (no broker is started here)
        "admin": {"jwt_secret": JWT_SECRET},
        "gateways": {"hooks": {"type": "webhook", "secret": HOOK_SECRET}},
    })
    app = create_app(settings, make_plugin_manager(entry_points=False, builtins=True))
    async with raw_http.serve(app) as port:
        yield port


def _token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "ops", "aud": AUD, "iat": now, "exp": now + 300}, JWT_SECRET, algorithm="HS256")


def _levels(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    return ([r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR],
            [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])


DEEP = b'{"ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"Bearer " + _token().encode()[:-1] + b"\xc3"])
async def test_defect17_6_admin_api_non_utf8_authorization_is_401(served, raw_http, caplog, value):
    caplog.set_level(logging.INFO)
    status, _, answer = await raw_http.request(served, "GET", "/-/api/overview", [("Authorization", value)])
    assert status == 401, answer
    assert json.loads(answer)["error"] == "malformed Authorization header"
    assert _levels(caplog)[0] == []


@pytest.mark.parametrize(("body", "reason"), [
    (DEEP, "nested deeper than"), (b'{"ids": ' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper than"),
    (b"[1, 2]", "must be a JSON object"), (b"\xff\xfe{", "not"),
])
async def test_defect17_7_admin_api_bad_json_is_400_with_a_reason(served, raw_http, caplog, body, reason):
    caplog.set_level(logging.INFO)
    status, _, answer = await raw_http.request(served, "POST", "/-/api/dlq/retry", [
        ("Authorization", f"Bearer {_token()}"), ("Content-Type", "application/json")], body)
    assert status == 400, answer
    assert reason in json.loads(answer)["error"]
    assert _levels(caplog)[0] == [] and not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("case", ["400-digit timestamp", "non-ASCII signature"])
async def test_defect17_6_dev_sink_records_hostile_signatures_as_bad(served, raw_http, caplog, case):
    caplog.set_level(logging.INFO)
    body = b'{"id": "m-1", "text": "hi"}'
    now = str(int(time.time()))
    ts, sig = now.encode(), sign(HOOK_SECRET, now, body).encode()
    if case == "400-digit timestamp":
        ts = b"9" * 400
    else:
        sig = sig[:-1] + b"\xff"
    status, _, answer = await raw_http.request(served, "POST", "/-/dev/sink", [
        ("Content-Type", "application/json"), ("X-Claudemesh-Timestamp", ts), ("X-Claudemesh-Signature", sig)], body)
    assert status == 200, answer
    _, _, listing = await raw_http.request(served, "GET", "/-/dev/sink")
    [entry] = json.loads(listing)
    assert entry["signed"] is False and entry["body"] == {"id": "m-1", "text": "hi"}
    assert _levels(caplog)[0] == []


async def test_defect17_7_dev_sink_refuses_deeply_nested_json(served, raw_http, caplog):
    caplog.set_level(logging.INFO)
    status, _, answer = await raw_http.request(served, "POST", "/-/dev/sink", [("Content-Type", "application/json")],
                                               b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and b"nested deeper than" in answer, answer
    _, _, listing = await raw_http.request(served, "GET", "/-/dev/sink")
    assert json.loads(listing) == []
    assert _levels(caplog)[0] == []
    # not JSON at all is still recorded as text, as before
    status, _, _ = await raw_http.request(served, "POST", "/-/dev/sink", [], b"plain words")
    _, _, listing = await raw_http.request(served, "GET", "/-/dev/sink")
    assert status == 200 and [e["body"] for e in json.loads(listing)] == ["plain words"]


@pytest.mark.parametrize("path", ["/-/dev/sink", "/-/api/dlq/retry"])
async def test_defect17_7_client_hanging_up_mid_body_is_one_quiet_line(served, raw_http, caplog, path):
    caplog.set_level(logging.INFO)
    body = json.dumps({"ids": list(range(20_000))}).encode()
    await raw_http.hang_up_mid_body(served, "POST", path, [
        ("Authorization", f"Bearer {_token()}"), ("Content-Type", "application/json")], body, sent=500)
    for _ in range(100):  # until the server has noticed (bounded)
        if any("went away" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    went = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(went) == 1 and went[0].levelno == logging.INFO
    assert _levels(caplog) == ([], []) and not any(r.exc_info for r in caplog.records)
