"""Issue 17 item 12 (log part) through the admin API: a token whose ``sub`` holds a newline (and
other control characters) logs exactly one line for its dead-letter action, not a forged second one."""

from __future__ import annotations

import io
import logging
import time

import jwt
import pytest
from aiohttp import web
from claudemesh_gateway.logconfig import configure_logging
from claudemesh_gateway.settings import settings_from_dict
from claudemesh_gateway.web import setup_web
from web_fakes import AUD, SECRET, make_runtime

FORGED = "ops\n2026-12-07 12:00:00,000 ERROR   claudemesh_gateway.app: forged line\r\x1b[2J\u2028end"


@pytest.fixture
def log_to():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def install(fmt: str) -> io.StringIO:
        buf = io.StringIO()
        configure_logging(settings_from_dict({"log": {"level": "DEBUG", "format": fmt}}))
        for h in logging.getLogger().handlers:
            h.setStream(buf)
        return buf

    yield install
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


async def test_defect17_12_admin_token_sub_with_a_newline_forges_no_line(log_to, aiohttp_client):
    runtime = make_runtime({"jwt_secret": SECRET, "audience": AUD})
    app = web.Application()
    setup_web(app, runtime)
    client = await aiohttp_client(app)
    buf = log_to("text")
    now = int(time.time())
    token = jwt.encode({"sub": FORGED, "aud": AUD, "iat": now, "exp": now + 60}, SECRET, algorithm="HS256")
    resp = await client.post("/-/api/dlq/retry", json={"ids": [1]}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    admin_lines = [ln for ln in buf.getvalue().splitlines() if "claudemesh_gateway.web" in ln or "forged" in ln]
    assert len(admin_lines) == 1, admin_lines
    assert "admin ops\\n2026-12-07" in admin_lines[0]
