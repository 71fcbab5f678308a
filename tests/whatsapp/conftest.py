"""Fixtures for the WhatsApp gateway: a fake Twilio REST API and a signed-webhook client.

Everything runs on 127.0.0.1; nothing reaches the internet. The twilio library has
no base-URL setting, so :class:`FakeTwilioHttp` (a subclass of the gateway's
``TwilioHttpClient``) resolves ``https://api.twilio.com`` to the fake, for REST calls and media
downloads alike. The fake serves inbound media as Twilio does: basic auth on
``/2010-04-01/Accounts/<sid>/Messages/<MM>/Media/<ME>``, answered with a 307 to a "CDN" path that
refuses any ``Authorization`` header.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from claudemesh_gateway import Address, Binding, Message, Outbound
from claudemesh_gateway.plugins.whatsapp.config import WhatsAppBindingOptions
from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
from claudemesh_gateway.plugins.whatsapp.transport import TwilioHttpClient
from claudemesh_gateway.testing import RecordingContext
from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "tok_" + "5ecr3t" * 5  # distinctive, so a leak is easy to find
API_KEY_SID = "SK" + "fedcba9876543210" * 2
API_KEY_SECRET = "keysecret_" + "x9" * 10
FROM = "whatsapp:+14155238886"
USER = "whatsapp:+15551230001"
OTHER = "whatsapp:+15551230002"
PUBLIC_URL = "https://gw.example.com"  # what Twilio calls; the test server listens elsewhere
NAME = "wa"


class FakeTwilio:
    """``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` as Twilio answers it, plus inbound media
    (``add_media``) behind basic auth and a redirect to an auth-refusing CDN path."""

    def __init__(self, username: str = ACCOUNT_SID, password: str = AUTH_TOKEN) -> None:
        self.username, self.password = username, password
        self.requests: list[list[tuple[str, str]]] = []
        self.errors: list[tuple[int, int | None, str, dict[str, str]]] = []
        self.media: dict[tuple[str, str], tuple[bytes, str]] = {}  # (MM, ME) -> (bytes, content type)
        self.media_errors: list[int] = []  # statuses the next media requests get (API hop)
        self.media_requests: list[dict[str, str]] = []  # headers of each API-hop request
        self.cdn_requests: list[dict[str, str]] = []  # headers of each CDN-hop request
        self.cdn_chunked = False  # stream CDN bodies without Content-Length
        self._cdn: dict[str, tuple[bytes, str]] = {}
        self.app = web.Application()
        self.app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self.create)
        self.app.router.add_get("/2010-04-01/Accounts/{account}/Messages/{message}/Media/{media}", self.get_media)
        self.app.router.add_get("/cdn/{key}", self.cdn)
        self.server = TestServer(self.app, host="127.0.0.1", port=0)
        self.count = 0

    def add_media(self, data: bytes, content_type: str = "image/jpeg", message: str = "MM" + "1" * 32,
                  media: str | None = None) -> str:
        """Store a file as Twilio holds inbound media; returns its MediaUrl as a webhook carries it."""
        media = media or "ME" + secrets.token_hex(16)
        self.media[(message, media)] = (data, content_type)
        return f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message}/Media/{media}"

    def _authorized(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return request.headers.get("Authorization", "") == expected

    async def get_media(self, request: web.Request) -> web.Response:
        self.media_requests.append(dict(request.headers))
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        if self.media_errors:
            status = self.media_errors.pop(0)
            return self._error(status, None, "media error")
        found = self.media.get((request.match_info["message"], request.match_info["media"]))
        if request.match_info["account"] != ACCOUNT_SID or found is None:
            return self._error(404, 20404, "The requested resource was not found")
        key = secrets.token_urlsafe(16)
        self._cdn[key] = found
        # Twilio redirects to a short-lived signed URL on its media CDN (mms.twiliocdn.com / S3)
        return web.Response(status=307, headers={"Location": f"{self.url}/cdn/{key}?Expires=1&Signature=x%2By"})

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        self.cdn_requests.append(dict(request.headers))
        if "Authorization" in request.headers:  # S3 rejects a second auth scheme on a signed URL
            return web.Response(status=400, text="Only one auth mechanism allowed")
        if request.query.get("Signature") != "x+y":
            return web.Response(status=403, text="SignatureDoesNotMatch")
        found = self._cdn.get(request.match_info["key"])
        if found is None:
            return web.Response(status=404)
        data, ctype = found
        if not self.cdn_chunked:
            return web.Response(body=data, headers={"Content-Type": ctype})
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 1024):
            await resp.write(data[i:i + 1024])
        await resp.write_eof()
        return resp

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def fail(self, status: int, code: int | None, message: str = "error", headers: dict[str, str] | None = None):
        self.errors.append((status, code, message, headers or {}))

    def last(self) -> dict[str, Any]:
        return _fields(self.requests[-1])

    @staticmethod
    def _error(status: int, code: int | None, message: str, headers: dict[str, str] | None = None):
        body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status}
        return web.json_response(body, status=status, headers=headers)

    async def create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        if request.match_info["account"] != ACCOUNT_SID:
            return self._error(404, 20404, "The requested resource was not found")
        form = await request.post()
        fields = [(k, str(v)) for k, v in form.items()]
        self.requests.append(fields)
        if self.errors:
            status, code, message, headers = self.errors.pop(0)
            media = [v for k, v in fields if k == "MediaUrl"]
            return self._error(status, code, message.replace("{MediaUrl}", media[0] if media else ""), headers)
        self.count += 1
        sid = "SM" + f"{self.count:032x}"
        f = _fields(fields)
        body = {
            "account_sid": ACCOUNT_SID, "api_version": "2010-04-01", "body": f.get("Body", ""),
            "date_created": "Thu, 26 Nov 2026 23:00:00 +0000", "date_sent": None,
            "date_updated": "Thu, 26 Nov 2026 23:00:00 +0000", "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": f.get("From"),
            "messaging_service_sid": f.get("MessagingServiceSid"), "num_media": str(len(f.get("MediaUrl", []))),
            "num_segments": "1", "price": None, "price_unit": None, "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media.json"},
            "to": f.get("To"), "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        }
        return web.json_response(body, status=201)


def _fields(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k == "MediaUrl":
            out.setdefault(k, []).append(v)
        else:
            out[k] = v
    return out


def fake_http_class(base_url: str) -> type[TwilioHttpClient]:
    class FakeTwilioHttp(TwilioHttpClient):
        def resolve(self, url: str) -> str:
            assert url.startswith("https://api.twilio.com/"), url
            return url.replace("https://api.twilio.com", base_url, 1)

    return FakeTwilioHttp


def sign(params: dict[str, str], url: str, token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def binding(chat: str = USER, direction: str = "both", route: str = "ops", **options: Any) -> Binding:
    return Binding(route=route, address=Address(NAME, chat), direction=direction,  # type: ignore[arg-type]
                   options=WhatsAppBindingOptions(**options))


def inbound_params(sid: str | None = None, body: str = "hello mesh", sender: str = USER, **extra: str) -> dict:
    params = {
        "SmsMessageSid": sid or "SM" + secrets.token_hex(16), "NumMedia": "0", "ProfileName": "Ada",
        "SmsSid": "", "WaId": sender.removeprefix("whatsapp:+"), "SmsStatus": "received", "Body": body,
        "To": FROM, "NumSegments": "1", "ReferralNumMedia": "0", "MessageSid": "", "AccountSid": ACCOUNT_SID,
        "From": sender, "ApiVersion": "2010-04-01",
    }
    params["MessageSid"] = params["SmsSid"] = params["SmsMessageSid"]
    params.update(extra)
    return params


@dataclasses.dataclass
class WA:
    gateway: WhatsAppGateway
    ctx: RecordingContext
    twilio: FakeTwilio
    client: Any  # aiohttp TestClient for the gateway's webhooks

    async def post(self, leaf: str, params: dict[str, str], *, url: str | None = None,
                   signature: str | None = None, token: str = AUTH_TOKEN) -> aiohttp.ClientResponse:
        url = url or f"{PUBLIC_URL}/gateways/{NAME}/{leaf}"
        sig = signature if signature is not None else sign(params, url, token)
        headers = {"X-Twilio-Signature": sig} if sig else {}
        return await self.client.post(f"/gateways/{NAME}/{leaf}", data=params, headers=headers)

    async def inbound(self, params: dict[str, str], **kw: Any) -> aiohttp.ClientResponse:
        return await self.post("inbound", params, **kw)

    async def status(self, sid: str, status: str, to: str = USER, error: str = "", **kw: Any):
        params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
                  "AccountSid": ACCOUNT_SID, "From": FROM, "To": to, "ApiVersion": "2010-04-01",
                  "ChannelToAddress": to.removeprefix("whatsapp:")}
        if error:
            params["ErrorCode"] = error
        return await self.post("status", params, **kw)

    async def open_window(self, number: str = USER, age_s: float = 0.0) -> None:
        await self.ctx.kv_set(f"window:{number}", time.time() - age_s)

    def outbound(self, text: str = "[alice] hello whatsapp", to: str = USER, *, part: int = 1, parts: int = 1,
                 options: WhatsAppBindingOptions | None = None, **kw: Any) -> Outbound:
        msg = Message(id="mesh:demo:m1", origin=Address("mesh", "demo:#ops"), sender="alice", text="hello")
        opts = options if options is not None else WhatsAppBindingOptions()
        return Outbound(message=msg, to=Address(NAME, to), text=text, part=part, parts=parts,
                        options=opts.model_dump(), **kw)


def default_config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "from_number": FROM,
                           "public_url": PUBLIC_URL}
    cfg.update(over)
    return cfg


@pytest.fixture
async def make_wa(aiohttp_client) -> Callable[..., Any]:
    """``await make_wa(bindings=[...], server_public_url=None, **config)`` -> :class:`WA` (started; stopped
    at teardown). ``server_public_url`` plays ``[server] public_url`` (``ctx.public_url``)."""
    made: list[tuple[WhatsAppGateway, FakeTwilio, aiohttp.ClientSession]] = []

    async def factory(bindings: list[Binding] | None = None, fake: FakeTwilio | None = None,
                      server_public_url: str | None = None, **config: Any) -> WA:
        twilio = fake or FakeTwilio()
        await twilio.server.start_server()
        session = aiohttp.ClientSession()
        ctx = RecordingContext(NAME, session, bindings if bindings is not None else [binding()],
                               public_url=server_public_url)
        cls = type("TestWhatsAppGateway", (WhatsAppGateway,), {"http_client_class": fake_http_class(twilio.url)})
        gw = cls(NAME, WhatsAppGateway.Config.model_validate(default_config(**config)), ctx)
        await gw.start()
        app = web.Application()
        sub = web.Application()
        sub.add_routes(gw.web_routes())
        app.add_subapp(f"/gateways/{NAME}/", sub)
        client = await aiohttp_client(app)
        made.append((gw, twilio, session))
        return WA(gateway=gw, ctx=ctx, twilio=twilio, client=client)

    yield factory
    for gw, twilio, session in made:
        await gw.stop()
        await twilio.server.close()
        await session.close()


@pytest.fixture
async def wa(make_wa) -> WA:
    return await make_wa()


@pytest.fixture
def wh():
    """This module: constants and helpers (tests cannot import a conftest under importlib mode)."""
    return sys.modules[__name__]
