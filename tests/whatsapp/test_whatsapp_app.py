"""The WhatsApp gateway inside the real core app (routing, outbox, delivery engine, message map).

A route binding two WhatsApp users relays between them through the core, so these tests
need no mesh: the webhook is mounted by ``create_app``, the core attributes and splits,
the delivery engine calls ``send`` against the fake Twilio API, and status callbacks are
attributed through the core's message map.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from claudemesh_gateway import DeliveryFailed, DeliveryStatus, Event, hookimpl
from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
from claudemesh_gateway.testing import build_test_app, wait_until


class Observer:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def track_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]




@contextlib.asynccontextmanager
async def _running(cfg, tmp_path, monkeypatch, wh):
    """The app on ``cfg`` with every WhatsApp instance pointed at one fake Twilio."""
    fake = wh.FakeTwilio()
    await fake.server.start_server()
    monkeypatch.setattr(WhatsAppGateway, "http_client_class", wh.fake_http_class(fake.url))
    observer = Observer()
    client, _runtime = await build_test_app(cfg, state_dir=tmp_path, plugins=[("wa-observer", observer)])
    try:
        yield client, fake, observer
    finally:
        await client.close()
        await fake.server.close()


@pytest.fixture
async def app(tmp_path, monkeypatch, wh):
    cfg = {
        "gateways": {"wa": {"type": "whatsapp", **wh.default_config()}},
        "routes": [{"name": "pair", "binds": [
            {"gateway": "wa", "chat": wh.USER},
            {"gateway": "wa", "chat": wh.OTHER, "options": {"notify_status": True}},
        ]}],
    }
    async with _running(cfg, tmp_path, monkeypatch, wh) as running:
        yield running


async def _post(client, wh, leaf: str, params: dict[str, str], token: str | None = None):
    url = f"{wh.PUBLIC_URL}/gateways/wa/{leaf}"
    sig = wh.sign(params, url, token or wh.AUTH_TOKEN)
    return await client.post(f"/gateways/wa/{leaf}", data=params, headers={"X-Twilio-Signature": sig})


async def test_relay_split_window_and_status_through_the_core(app, wh):
    client, fake, obs = app

    # forged: 403 from the mounted webhook, nothing routed
    resp = await _post(client, wh, "inbound", wh.inbound_params(sender=wh.OTHER, body="forged"), token="nope")
    assert resp.status == 403

    # OTHER writes: relayed to USER, who never wrote -> outside the window -> held (dead letter)
    resp = await _post(client, wh, "inbound", wh.inbound_params(sender=wh.OTHER, body="hi", ProfileName="Bo"))
    assert resp.status == 200 and "<Response></Response>" in await resp.text()
    await wait_until(lambda: any(e.to.chat == wh.USER for e in obs.of(DeliveryFailed)))
    (held,) = obs.of(DeliveryFailed)
    assert held.permanent and "24-hour window" in held.error
    assert fake.requests == []

    # USER writes 2,000 characters: split by the core into two parts, delivered in order to OTHER
    long_text = ("The quick brown fox jumps over the lazy dog. " * 45)[:2000]
    sid_in = "SM" + "7" * 32
    resp = await _post(client, wh, "inbound", wh.inbound_params(sid=sid_in, sender=wh.USER, body=long_text))
    assert resp.status == 200
    await wait_until(lambda: len(fake.requests) >= 2)
    parts = [dict(r) for r in fake.requests]
    assert [p["To"] for p in parts] == [wh.OTHER, wh.OTHER]
    assert all(len(p["Body"]) <= 1600 for p in parts)
    assert parts[0]["Body"].startswith("Ada")  # the core's attribution
    words = " ".join(p["Body"] for p in parts)
    assert "quick brown fox" in words and words.index("quick") < len(parts[0]["Body"])
    assert all(p["StatusCallback"] == f"{wh.PUBLIC_URL}/gateways/wa/status" for p in parts)

    # Twilio reports part 1 undelivered: DeliveryStatus + DeliveryFailed for the core's message,
    # and (notify_status on OTHER's binding) a notice routed like a message from OTHER's chat -> USER
    sid_out = f"SM{1:032x}"
    status = {"MessageSid": sid_out, "MessageStatus": "undelivered", "ErrorCode": "63016",
              "AccountSid": wh.ACCOUNT_SID, "From": wh.FROM, "To": wh.OTHER}
    assert (await _post(client, wh, "status", status)).status == 200
    await wait_until(lambda: any(e.native_id == sid_out for e in obs.of(DeliveryStatus)))
    failed = [e for e in obs.of(DeliveryFailed) if e.to.chat == wh.OTHER]
    assert failed and failed[0].message.id == f"whatsapp:wa:{sid_in}"  # via the core's message map
    await wait_until(lambda: len(fake.requests) >= 3)
    notice = dict(fake.requests[2])
    assert notice["To"] == wh.USER and f"⚠ delivery to {wh.OTHER} failed: 63016" in notice["Body"]


@pytest.fixture
async def two_senders(tmp_path, monkeypatch, wh):
    """Two WhatsApp instances (two senders of one account) on one route: files cross between them."""
    cfg = {
        "gateways": {
            "wa": {"type": "whatsapp", **wh.default_config()},
            "wa2": {"type": "whatsapp", **wh.default_config(from_number="whatsapp:+14155238887")},
        },
        "routes": [{"name": "files", "binds": [
            {"gateway": "wa", "chat": wh.USER},
            {"gateway": "wa2", "chat": wh.OTHER},
        ]}],
    }
    async with _running(cfg, tmp_path, monkeypatch, wh) as running:
        yield running


async def test_an_inbound_image_reaches_another_gateway_as_bytes(two_senders, wh):
    """WhatsApp (wa) -> the core fetches the twilio: reference with wa's credentials (CDN hop without
    them) -> wa2 gets bytes, offers them to Twilio on its media URL, and Twilio can fetch them there."""
    client, fake, obs = two_senders

    async def post(gateway: str, params: dict[str, str]):
        url = f"{wh.PUBLIC_URL}/gateways/{gateway}/inbound"
        return await client.post(f"/gateways/{gateway}/inbound", data=params,
                                 headers={"X-Twilio-Signature": wh.sign(params, url)})

    # OTHER writes to wa2 first (opens their window there); the copy to USER is held: USER never wrote
    assert (await post("wa2", wh.inbound_params(sender=wh.OTHER, body="hi", To="whatsapp:+14155238887"))).status == 200
    await wait_until(lambda: any(e.to.chat == wh.USER for e in obs.of(DeliveryFailed)))

    image = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 16
    media_url = fake.add_media(image, "image/jpeg")
    params = wh.inbound_params(sender=wh.USER, body="look", NumMedia="1", MediaUrl0=media_url,
                               MediaContentType0="image/jpeg")
    assert (await post("wa", params)).status == 200
    await wait_until(lambda: any(dict(r).get("To") == wh.OTHER for r in fake.requests))
    sent = wh._fields(next(r for r in fake.requests if dict(r).get("To") == wh.OTHER))
    assert sent["From"] == "whatsapp:+14155238887"
    assert sent["Body"] == "Ada: look"  # the file travels itself: no description
    (hosted,) = sent["MediaUrl"]
    prefix = f"{wh.PUBLIC_URL}/gateways/wa2/media/"
    assert hosted.startswith(prefix)

    # the core fetched it from wa: credentials on Twilio's API, none on the CDN hop
    assert len(fake.media_requests) == 1 and fake.media_requests[0]["Authorization"].startswith("Basic ")
    assert len(fake.cdn_requests) == 1 and "Authorization" not in fake.cdn_requests[0]

    # Twilio fetches the file from the mounted media route of wa2 (and only there)
    resp = await client.get(hosted[len(wh.PUBLIC_URL):])
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
    assert await resp.read() == image
    token = hosted[len(prefix):]
    assert (await client.get(f"/gateways/wa/media/{token}")).status == 404
