"""Issue 16, SSRF and credential leaks, WhatsApp (Twilio): an inbound ``MediaUrl<n>`` is read only as a
path on Twilio's API host (with the account's credentials), its redirect is followed only to Twilio's
media CDN (Twilio's or S3) over https and without the credentials, and no private or loopback address is
reached unless the test setting allows loopback. DNS answers are played by replacing
``files.resolve_addresses``: no lookup leaves the machine."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from claudemesh_gateway import Attachment, DeliveryError, files

MB = 1024 * 1024


@pytest.fixture
def dns(monkeypatch):
    answers: dict[str, list[str]] = {}

    async def resolve(host: str, port: int) -> list[str]:
        assert host in answers, f"unexpected DNS lookup of {host}"
        return answers[host]

    monkeypatch.setattr(files, "resolve_addresses", resolve)
    return answers


@pytest.fixture
async def foreign(aiohttp_server):
    seen: list[dict[str, str]] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=b"stolen")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/"), seen


def _redirecting(wh: Any, location: str) -> Any:
    class Redirecting(wh.FakeTwilio):
        async def get_media(self, request: web.Request) -> web.Response:
            self.media_requests.append(dict(request.headers))
            return web.Response(status=307, headers={"Location": location})

    return Redirecting()


def _att(wa: Any, url: str) -> Attachment:
    ref = wa.gateway._media_ref(url)
    assert ref is not None
    return Attachment(name="ME1.jpg", content_type="image/jpeg", url=ref)


async def test_ssrf16_whatsapp_media_url_on_another_host_is_never_fetched(make_wa, wh):
    wa = await make_wa()
    for url in ("https://evil.example/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
                "http://api.twilio.com/2010-04-01/Accounts/ACxxxxxxxx/Messages/MM1/Media/ME1",
                "https://u:p@api.twilio.com/2010-04-01/Accounts/ACxxxxxxxx/Messages/MM1/Media/ME1",
                "https://api.twilio.com/2010-04-01/Accounts/ACxxxxxxxx/Messages/MM1/Media/../../../x",
                "https://169.254.169.254/latest/meta-data/"):
        assert wa.gateway._media_ref(url) is None, url       # not a reference: the core cannot ask for it
        with pytest.raises(DeliveryError, match="not a media file") as info:
            await wa.gateway.fetch_attachment(Attachment(name="x", url=url), MB)
        assert info.value.permanent
    assert wa.twilio.media_requests == []


async def test_ssrf16_whatsapp_redirect_to_another_host_is_not_followed(make_wa, wh, foreign):
    base, seen = foreign
    wa = await make_wa(fake=_redirecting(wh, f"{base}/steal"))
    with pytest.raises(DeliveryError, match="not the vendor's") as info:
        await wa.gateway.fetch_attachment(_att(wa, wa.twilio.add_media(b"jpeg")), MB)
    assert info.value.permanent and wh.AUTH_TOKEN not in str(info.value)
    assert seen == [] and len(wa.twilio.media_requests) == 1


async def test_ssrf16_whatsapp_redirect_to_the_cdn_over_plain_http_is_refused(make_wa, wh):
    wa = await make_wa(fake=_redirecting(wh, "http://media.twiliocdn.com/AC1/ME1?Expires=1"))
    with pytest.raises(DeliveryError, match="plain http") as info:
        await wa.gateway.fetch_attachment(_att(wa, wa.twilio.add_media(b"jpeg")), MB)
    assert info.value.permanent


async def test_ssrf16_whatsapp_cdn_resolving_to_a_private_address_is_refused(make_wa, wh, dns):
    dns["s3-external-1.amazonaws.com"] = ["172.20.0.3"]
    wa = await make_wa(fake=_redirecting(wh, "https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC1/ME1"))
    with pytest.raises(DeliveryError, match="private") as info:
        await wa.gateway.fetch_attachment(_att(wa, wa.twilio.add_media(b"jpeg")), MB)
    assert info.value.permanent


async def test_ssrf16_whatsapp_loopback_needs_the_test_setting(make_wa, wh, monkeypatch):
    wa = await make_wa()
    att = _att(wa, wa.twilio.add_media(b"jpeg"))
    monkeypatch.delenv(files.LOOPBACK_ENV, raising=False)
    with pytest.raises(DeliveryError, match="loopback") as info:
        await wa.gateway.fetch_attachment(att, MB)
    assert info.value.permanent and wa.twilio.media_requests == []
    monkeypatch.setenv(files.LOOPBACK_ENV, "1")
    assert await wa.gateway.fetch_attachment(att, MB) == b"jpeg"
