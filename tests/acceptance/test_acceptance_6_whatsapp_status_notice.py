"""#6 "a `failed` status callback produces a `DeliveryFailed` event and, when configured, a mesh
notice" through the whole app on the dev broker (tests/whatsapp/test_whatsapp_app.py routes the
notice to another WhatsApp chat, not to the mesh): a mesh post goes out through a fake Twilio REST
API on loopback; Twilio's signed ``failed`` status callback comes back; a second mesh peer reads
the notice in the topic, and the DeliveryFailed event names the mesh message."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from aiohttp import web
from claudemesh_gateway import DeliveryFailed, hookimpl
from twilio.request_validator import RequestValidator

from .conftest import FAST_POLL, wait_until

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "acceptance-twilio-auth-token-0123"
FROM = "whatsapp:+15550000000"
USER = "whatsapp:+15551230001"
PUBLIC = "https://gw.example.org"


class FakeTwilio:
    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []
        self._n = itertools.count(1)

    async def create(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.sent.append(form)
        sid = "SM" + f"{next(self._n):032x}"
        return web.json_response({
            "account_sid": ACCOUNT_SID, "api_version": "2010-04-01", "body": form.get("Body", ""),
            "date_created": "Thu, 26 Nov 2026 23:00:00 +0000", "date_sent": None,
            "date_updated": "Thu, 26 Nov 2026 23:00:00 +0000", "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": form.get("From"), "messaging_service_sid": None, "num_media": "0",
            "num_segments": "1", "price": None, "price_unit": None, "sid": sid, "status": "queued",
            "subresource_uris": {}, "to": form.get("To"),
            "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json"}, status=201)


class Events:
    def __init__(self) -> None:
        self.events: list[Any] = []

    @hookimpl
    def track_event(self, event: Any) -> None:
        self.events.append(event)


def signed(params: dict[str, str], path: str) -> dict[str, str]:
    sig = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC}{path}", params)
    return {"X-Twilio-Signature": sig}


@pytest.fixture
async def fake_twilio(aiohttp_server, monkeypatch):
    from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
    from claudemesh_gateway.plugins.whatsapp.transport import TwilioHttpClient

    fake = FakeTwilio()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", fake.create)
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")

    class LoopbackTwilio(TwilioHttpClient):
        async def request(self, method, url, *args, **kwargs):  # type: ignore[override]
            assert url.startswith("https://api.twilio.com/"), url
            return await super().request(method, url.replace("https://api.twilio.com", base), *args, **kwargs)

    monkeypatch.setattr(WhatsAppGateway, "http_client_class", LoopbackTwilio)
    return fake


async def test_failed_status_callback_gives_delivery_failed_and_a_mesh_notice(
        file_app, dev_broker, member, fake_twilio):
    client, runtime, _ = await file_app({
        "mesh": {"dev": FAST_POLL},
        "gateways": {"wa": {"type": "whatsapp", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                            "from_number": FROM, "public_url": PUBLIC}},
        "routes": [{"name": "support", "mesh": "dev", "topic": "general", "direction": "both",
                    "encryption": "hkdf",  # v3, chosen explicitly (the default auto posts v1 here)
                    "binds": [{"gateway": "wa", "chat": USER, "options": {"notify_status": True}}]}],
    }, broker=dev_broker)
    events = Events()
    runtime.pm.register(events, name="acceptance-events")  # an observer plugin, as a third party would add
    await runtime.meshes["dev"].wait_connected(10)
    got: list[Any] = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")

    # the user writes first (opens the 24-hour window), then a mesh post goes out to them
    inbound = {"MessageSid": "SM" + "0" * 32, "SmsMessageSid": "SM" + "0" * 32, "AccountSid": ACCOUNT_SID,
               "From": USER, "To": FROM, "Body": "hi from whatsapp", "NumMedia": "0", "ProfileName": "Ada",
               "WaId": USER.removeprefix("whatsapp:+")}
    resp = await client.post("/gateways/wa/inbound", data=inbound, headers=signed(inbound, "/gateways/wa/inbound"))
    assert resp.status == 200, await resp.text()
    await wait_until(lambda: any("hi from whatsapp" in i.text for i in got), 20, "the inbound message at bob")

    alice = await member("dev_alice")
    mesh_id = await alice.post_topic("general", "your ticket is closed")
    await wait_until(lambda: fake_twilio.sent, 20, "the Twilio send")
    (sent,) = fake_twilio.sent
    assert sent["To"] == USER and "alice" in sent["Body"] and "your ticket is closed" in sent["Body"]
    assert sent.get("StatusCallback", "").startswith(f"{PUBLIC}/gateways/wa/status")
    sid = "SM" + f"{1:032x}"

    status = {"MessageSid": sid, "MessageStatus": "failed", "AccountSid": ACCOUNT_SID, "To": USER, "From": FROM,
              "ErrorCode": "63003", "ErrorMessage": "Channel could not find To address"}
    forged = await client.post("/gateways/wa/status", data=status, headers={"X-Twilio-Signature": "bad"})
    assert forged.status == 403
    resp = await client.post("/gateways/wa/status", data=status, headers=signed(status, "/gateways/wa/status"))
    assert resp.status == 200, await resp.text()

    await wait_until(lambda: any("failed" in i.text and USER in i.text for i in got), 20, "the notice in the mesh")
    (notice,) = [i for i in got if "failed" in i.text and USER in i.text]
    assert notice.body_version == 3
    failed = [e for e in events.events if isinstance(e, DeliveryFailed) and e.to.chat == USER]
    assert failed, "no DeliveryFailed event for the failed status callback"
    assert failed[0].message.id.endswith(mesh_id) or mesh_id in failed[0].message.id, (failed[0].message.id, mesh_id)
