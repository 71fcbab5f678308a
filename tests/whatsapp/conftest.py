"""Fixtures for the WhatsApp gateway: a fake Twilio REST API and a signed-webhook client.

Everything runs on 127.0.0.1; nothing reaches the internet. The twilio library has
no base-URL setting, so :class:`FakeTwilioHttp` (a subclass of the gateway's
``AsyncTwilioHttpClient``) rewrites ``https://api.twilio.com`` to the fake.
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
from claudemesh_gateway.plugins.whatsapp.gateway import (
    TwilioHttpClient,
    WhatsAppBindingOptions,
    WhatsAppGateway,
)
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
    """``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` as Twilio answers it."""

    def __init__(self, username: str = ACCOUNT_SID, password: str = AUTH_TOKEN) -> None:
        self.username, self.password = username, password
        self.requests: list[list[tuple[str, str]]] = []
        self.errors: list[tuple[int, int | None, str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self.create)
        self.server = TestServer(self.app, host="127.0.0.1", port=0)
        self.count = 0

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
        auth = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if auth != expected:
            return self._error(401, 20003, "Authenticate")
        if request.match_info["account"] != ACCOUNT_SID:
            return self._error(404, 20404, "The requested resource was not found")
        form = await request.post()
        fields = [(k, str(v)) for k, v in form.items()]
        self.requests.append(fields)
        if self.errors:
            status, code, message, headers = self.errors.pop(0)
            return self._error(status, code, message, headers)
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
        async def request(self, method, url, *args, **kwargs):  # type: ignore[override]
            assert url.startswith("https://api.twilio.com/"), url
            return await super().request(method, url.replace("https://api.twilio.com", base_url), *args, **kwargs)

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
