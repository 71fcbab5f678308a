"""Fuzz: the generic webhook gateway's inbound body (behind a valid signature) and its headers.

Invariant: 200 (queued or duplicate) or a 4xx with nothing submitted; never a 5xx; a good signed post
right after still reaches the core.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
from typing import Any

import pytest
from claudemesh_gateway import Address, Binding
from claudemesh_gateway.plugins.webhook.gateway import WebhookBindingOptions, WebhookConfig, WebhookGateway
from claudemesh_gateway.plugins.webhook.signature import sign
from claudemesh_gateway.testing import RecordingContext
from hypothesis import strategies as st

from .conftest import fuzz, json_values, mounted, mutate, nasty_text, with_deep_json

SECRET = "fuzz-webhook-secret-0123456789"
_ids = itertools.count(1)
GOOD = {"id": "x", "sender": "CI", "text": "hello", "sender_id": "ci", "reply_to": None, "tags": ["a"],
        "thread": None}


@pytest.fixture
async def webhook(http, aiohttp_client):
    ctx = RecordingContext("wh", http, [Binding(route="r", address=Address("wh", "ci"), direction="both",
                                                options=WebhookBindingOptions())])
    gw = WebhookGateway("wh", WebhookConfig(secret=SECRET, max_body_bytes=4096), ctx)
    await gw.start()
    client = await mounted(aiohttp_client, "wh", gw.web_routes())
    yield ctx, client
    await gw.stop()


@st.composite
def bodies(draw: Any) -> bytes:
    shape = draw(st.sampled_from(["raw", "json", "payload", "big"]))
    if shape == "raw":
        return draw(st.binary(max_size=300))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    if shape == "big":  # around the 4096-byte cap
        return json.dumps({**GOOD, "text": "x" * draw(st.integers(3900, 4200))}).encode()
    return json.dumps(mutate(GOOD, draw)).encode()


# Header values: any byte a client can put in a header (latin-1 without controls), timestamps of any
# length (a non-ASCII byte or a 400-digit timestamp was a 500 until issue 17 item 6)
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                      max_size=80)
timestamps = st.integers(0, 10**400).map(str) | header_text | st.sampled_from(["", "-1", "1.5", "0x10", " 1", "NaN"])


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    body = draw(with_deep_json(bodies()))
    chat = draw(st.sampled_from(["ci", "ci", "other"]) | nasty_text.filter(lambda s: s and "/" not in s))
    headers = {"Content-Type": "application/json"}
    ts = str(int(time.time()))
    tamper = draw(st.sampled_from(["none", "none", "timestamp", "signature", "missing"]))
    headers["X-Claudemesh-Timestamp"] = draw(timestamps) if tamper == "timestamp" else ts
    headers["X-Claudemesh-Signature"] = draw(header_text) if tamper == "signature" else sign(SECRET, int(ts), body)
    if tamper == "missing":
        del headers[draw(st.sampled_from(["X-Claudemesh-Timestamp", "X-Claudemesh-Signature"]))]
    return {"body": body, "chat": chat, "headers": headers}


async def test_fuzz_webhook_inbound(webhook):
    ctx, client = webhook

    async def one(req: dict[str, Any]) -> None:
        before = len(ctx.submitted)
        path = "/gateways/wh/" + urllib.parse.quote(req["chat"], safe="")
        resp = await client.post(path, data=req["body"], headers=req["headers"])
        assert resp.status in (200, 400, 401, 404, 413), (resp.status, await resp.text())
        if resp.status != 200:
            assert len(ctx.submitted) == before
        n = next(_ids)
        good = json.dumps({**GOOD, "id": f"good-{n}", "text": f"good {n}"}).encode()
        ts = int(time.time())
        resp = await client.post("/gateways/wh/ci", data=good, headers={
            "Content-Type": "application/json", "X-Claudemesh-Timestamp": str(ts),
            "X-Claudemesh-Signature": sign(SECRET, ts, good)})
        assert resp.status == 200 and ctx.submitted[-1].text == f"good {n}"

    await fuzz(requests(), one)
