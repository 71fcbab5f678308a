"""The generic webhook gateway against a loopback sink, and its inbound endpoint."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import aiohttp
import pytest
from aiohttp import web
from claudemesh_gateway import Address, Binding, DeliveryError, Message, Outbound
from claudemesh_gateway.plugins.webhook.gateway import (
    WebhookBindingOptions,
    WebhookConfig,
    WebhookGateway,
)
from claudemesh_gateway.plugins.webhook.signature import SignatureError, sign, signature_headers, verify
from claudemesh_gateway.testing import RecordingContext

SECRET = "s3cret-s3cret-s3cret"


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"v1={expected}"


def test_verify_accepts_fresh_rejects_stale_bad_and_missing():
    body = b"payload"
    now = 1_700_000_000
    good = sign(SECRET, now, body)
    verify(SECRET, str(now), good, body, tolerance_s=300, now=now + 299)
    verify(SECRET, str(now), f"v1=deadbeef, {good}", body, tolerance_s=300, now=now)  # rotation
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, str(now), good, body, tolerance_s=300, now=now + 301)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, str(now), good, body + b"x", tolerance_s=300, now=now)
    with pytest.raises(SignatureError, match="does not match"):
        verify("another-secret-value", str(now), good, body, tolerance_s=300, now=now)
    with pytest.raises(SignatureError, match="missing"):
        verify(SECRET, None, good, body, tolerance_s=300, now=now)
    with pytest.raises(SignatureError, match="integer"):
        verify(SECRET, "soon", good, body, tolerance_s=300, now=now)


def test_config_validation():
    with pytest.raises(ValueError):
        WebhookConfig(secret="short")
    with pytest.raises(ValueError):
        WebhookConfig(secret=SECRET, url="ftp://x")
    with pytest.raises(ValueError):
        WebhookBindingOptions(url="nope")
    assert WebhookConfig(secret=SECRET).tolerance_s == 300


class Sink:
    """Loopback receiver: records requests; answers per chat from ``script``."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: dict[str, tuple[int, dict[str, str], str]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status, headers, text = self.script.get(request.match_info["chat"], (200, {}, '{"id": "n-1"}'))
        return web.Response(status=status, headers=headers, text=text, content_type="application/json")


@pytest.fixture
async def sink(aiohttp_server):
    s = Sink()
    app = web.Application()
    app.router.add_post("/hook/{chat}", s.handle)
    server = await aiohttp_server(app)
    s.url = str(server.make_url("/hook"))
    return s


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def make_gateway(http, bindings=(), **cfg):
    ctx = RecordingContext("wh", http, bindings)
    return WebhookGateway("wh", WebhookConfig(secret=SECRET, **cfg), ctx), ctx


def outbound(chat="c1", url=None, text="ann: hi"):
    m = Message(id="tg:1", origin=Address("tg", "-100"), sender="ann", sender_id="u1", text="hi",
                tags=frozenset({"ops"}), raw={"route": "room"})
    return Outbound(message=m, to=Address("wh", chat), text=text, options={"url": url} if url else {},
                    idempotency_key="tg:1|wh/c1|1", reply_to="n-0")


async def test_send_posts_signed_json(sink, http):
    gw, ctx = make_gateway(http, url=sink.url + "/c1")
    res = await gw.send(outbound())
    assert res.native_ids == ("n-1",)
    headers, body = sink.requests[0]
    verify(SECRET, headers["X-Claudemesh-Timestamp"], headers["X-Claudemesh-Signature"], body, tolerance_s=5)
    data = json.loads(body)
    assert data["id"] == "tg:1" and data["route"] == "room" and data["text"] == "ann: hi"
    assert data["sender"] == "ann" and data["origin"] == {"gateway": "tg", "chat": "-100", "thread": None}
    assert data["reply_to"] == "n-0" and data["tags"] == ["ops"] and data["attachments"] == []
    assert headers["Idempotency-Key"] == "tg:1|wh/c1|1"
    assert SECRET in ctx.secrets


async def test_binding_url_overrides_instance_url(sink, http):
    gw, _ = make_gateway(http, url=sink.url + "/default")
    await gw.send(outbound(chat="c2", url=sink.url + "/special"))
    assert len(sink.requests) == 1
    gw2, _ = make_gateway(http)
    with pytest.raises(DeliveryError) as e:
        await gw2.send(outbound())
    assert e.value.permanent


@pytest.mark.parametrize(("status", "headers", "permanent", "retry_after"), [
    (429, {"Retry-After": "7"}, False, 7.0),
    (503, {}, False, None),
    (500, {"Retry-After": "2"}, False, 2.0),
    (408, {}, False, None),
    (404, {}, True, None),
    (401, {}, True, None),
])
async def test_http_errors_are_classified(sink, http, status, headers, permanent, retry_after):
    sink.script["c1"] = (status, headers, "{}")
    gw, _ = make_gateway(http, url=sink.url + "/c1")
    with pytest.raises(DeliveryError) as e:
        await gw.send(outbound())
    assert e.value.permanent is permanent
    assert e.value.retry_after == retry_after
    assert sink.url not in str(e.value)


async def test_network_error_is_transient_and_hides_the_url(http, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}/hook?token=abc"
    gw, _ = make_gateway(http, url=url, timeout=2)
    with pytest.raises(DeliveryError) as e:
        await gw.send(outbound())
    assert not e.value.permanent
    assert "token" not in str(e.value) and "127.0.0.1" not in str(e.value)


# -- inbound -------------------------------------------------------------------------------------------------


@pytest.fixture
async def inbound_client(aiohttp_client, http):
    bindings = [Binding(route="room", address=Address("wh", "in1"), direction="both",
                        options=WebhookBindingOptions()),
                Binding(route="feed", address=Address("wh", "out-only"), direction="out")]
    gw, ctx = make_gateway(http, bindings)
    await gw.start()
    app = web.Application()
    sub = web.Application()
    sub.add_routes(gw.web_routes())
    app.add_subapp("/gateways/wh/", sub)
    client = await aiohttp_client(app)
    client.gw, client.ctx = gw, ctx
    return client


def signed(payload, *, secret=SECRET, ts=None):
    body = json.dumps(payload).encode()
    headers = signature_headers(secret, body, now=ts)
    headers["Content-Type"] = "application/json"
    return body, headers


async def test_inbound_signed_message_is_submitted(inbound_client):
    body, headers = signed({"id": 42, "sender": "CI bot", "sender_id": "ci", "text": "build green",
                            "reply_to": "n-1", "tags": ["Ops", "tag:deploy", "bad tag!"]})
    resp = await inbound_client.post("/gateways/wh/in1", data=body, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["status"] == "queued"
    (m,) = inbound_client.ctx.submitted
    assert m.id == "webhook:wh:in1:42" and m.origin == Address("wh", "in1")
    assert (m.sender, m.sender_id, m.text, m.native_id, m.reply_to) == ("CI bot", "ci", "build green", "42", "n-1")
    assert m.tags == {"ops", "deploy"}
    again = await inbound_client.post("/gateways/wh/in1", data=body, headers=headers)
    assert (await again.json())["status"] == "duplicate"


async def test_inbound_without_id_uses_body_hash(inbound_client):
    body, headers = signed({"sender": "x", "text": "y"})
    resp = await inbound_client.post("/gateways/wh/in1", data=body, headers=headers)
    assert resp.status == 200
    assert inbound_client.ctx.submitted[0].id == f"webhook:wh:in1:{hashlib.sha256(body).hexdigest()}"


@pytest.mark.parametrize("case", ["missing", "bad", "stale", "wrong-secret", "tampered"])
async def test_inbound_bad_signatures_get_401_and_submit_nothing(inbound_client, case):
    body, headers = signed({"sender": "x", "text": "y"})
    if case == "missing":
        headers = {"Content-Type": "application/json"}
    elif case == "bad":
        headers["X-Claudemesh-Signature"] = "v1=" + "0" * 64
    elif case == "stale":
        body, headers = signed({"sender": "x", "text": "y"}, ts=time.time() - 301)
    elif case == "wrong-secret":
        body, headers = signed({"sender": "x", "text": "y"}, secret="not-the-right-secret")
    elif case == "tampered":
        body = body.replace(b'"y"', b'"z"')
    resp = await inbound_client.post("/gateways/wh/in1", data=body, headers=headers)
    assert resp.status == 401
    assert inbound_client.ctx.submitted == []


async def test_inbound_rejects_unbound_chat_bad_body_and_reports_submit_failure(inbound_client):
    body, headers = signed({"sender": "x", "text": "y"})
    assert (await inbound_client.post("/gateways/wh/nope", data=body, headers=headers)).status == 404
    assert (await inbound_client.post("/gateways/wh/out-only", data=body, headers=headers)).status == 404
    body, headers = signed({"text": "no sender"})
    assert (await inbound_client.post("/gateways/wh/in1", data=body, headers=headers)).status == 400
    raw = b"not json"
    h = signature_headers(SECRET, raw)
    assert (await inbound_client.post("/gateways/wh/in1", data=raw, headers=h)).status == 400
    inbound_client.ctx.fail_submit = RuntimeError("store down")
    body, headers = signed({"sender": "x", "text": "y"})
    resp = await inbound_client.post("/gateways/wh/in1", data=body, headers=headers)
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert inbound_client.ctx.submitted == []


async def test_inbound_while_stopping_is_503(inbound_client):
    await inbound_client.gw.stop()
    body, headers = signed({"sender": "x", "text": "y"})
    resp = await inbound_client.post("/gateways/wh/in1", data=body, headers=headers)
    assert resp.status == 503
    assert inbound_client.ctx.submitted == []


async def test_check_warns_about_outbound_bindings_without_url(http):
    gw, _ = make_gateway(http, [Binding(route="r", address=Address("wh", "c"), direction="out",
                                        options=WebhookBindingOptions())])
    assert any("no url" in w for w in await gw.check())
    gw2, _ = make_gateway(http, [Binding(route="r", address=Address("wh", "c"), direction="out",
                                         options=WebhookBindingOptions(url="http://x/y"))])
    assert await gw2.check() == []
