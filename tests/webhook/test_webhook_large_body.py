"""Large inbound bodies arrive in many segments: the whole body is read (and signed) until EOF."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from claudemesh_gateway import Address, Binding
from claudemesh_gateway.plugins.webhook.gateway import WebhookBindingOptions, WebhookConfig, WebhookGateway
from claudemesh_gateway.plugins.webhook.signature import signature_headers
from claudemesh_gateway.testing import RecordingContext

SECRET = "s3cret-s3cret-s3cret"
CHUNK = 16 * 1024


async def _chunks(body: bytes):
    for i in range(0, len(body), CHUNK):
        yield body[i:i + CHUNK]
        await asyncio.sleep(0)  # let the server see a partial body


@pytest.fixture
async def large_client(aiohttp_client):
    async with aiohttp.ClientSession() as http:
        ctx = RecordingContext("wh", http, [Binding(route="room", address=Address("wh", "in1"), direction="both",
                                                    options=WebhookBindingOptions())])
        gw = WebhookGateway("wh", WebhookConfig(secret=SECRET, max_body_bytes=2_000_000), ctx)
        await gw.start()
        app = web.Application()
        sub = web.Application()
        sub.add_routes(gw.web_routes())
        app.add_subapp("/gateways/wh/", sub)
        client = await aiohttp_client(app)
        client.ctx = ctx
        yield client
        await gw.stop()


async def test_chunked_900k_body_verifies_and_is_submitted(large_client):
    text = "\u00e9" * 150_000  # escaped as \\u00e9 by json.dumps: 6 bytes a character, ~900 KB
    body = json.dumps({"id": "big-1", "sender": "ci", "text": text}).encode()
    assert 880_000 < len(body) < 1_000_000
    headers = {**signature_headers(SECRET, body), "Content-Type": "application/json"}
    resp = await large_client.post("/gateways/wh/in1", data=_chunks(body), headers=headers)
    assert resp.status == 200, await resp.text()
    (m,) = large_client.ctx.submitted
    assert m.id == "webhook:wh:in1:big-1" and m.text == text


async def test_chunked_body_over_the_cap_is_413(large_client):
    body = json.dumps({"sender": "ci", "text": "y" * 2_100_000}).encode()
    headers = {**signature_headers(SECRET, body), "Content-Type": "application/json"}
    resp = await large_client.post("/gateways/wh/in1", data=_chunks(body), headers=headers)
    assert resp.status == 413
    assert large_client.ctx.submitted == []
