"""Files both ways: bytes offered to Twilio on a capability URL, and inbound media as references
this gateway downloads with the account's credentials (never on the CDN hop)."""

from __future__ import annotations

import logging

import pytest
from claudemesh_gateway import Attachment, DeliveryError
from claudemesh_gateway.plugins.whatsapp.config import WhatsAppConfig
from claudemesh_gateway.plugins.whatsapp.media import MediaStore

MB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def png(data: bytes = PNG, name: str = "cat.png", **kw) -> Attachment:
    return Attachment(name=name, content_type="image/png", data=data, **kw)


def media_path(wh, url: str) -> str:
    prefix = f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/media/"
    assert url.startswith(prefix), url
    return url[len(wh.PUBLIC_URL):]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- outbound: bytes on a capability URL --------------------------------------------------------------------------
async def test_bytes_are_offered_to_twilio_on_a_capability_url(wa, wh):
    await wa.open_window()
    await wa.gateway.send(wa.outbound("[alice] look", attachments=(png(),)))
    sent = wa.twilio.last()
    (url,) = sent["MediaUrl"]
    path = media_path(wh, url)
    token = path.rsplit("/", 1)[1]
    assert len(token) >= 43  # secrets.token_urlsafe(32)
    assert sent["Body"] == "[alice] look"  # the file itself travels, no description

    resp = await wa.client.get(path)
    assert resp.status == 200
    assert await resp.read() == PNG
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Length"] == str(len(PNG))
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    head = await wa.client.head(path)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(PNG))
    assert head.headers["Content-Type"] == "image/png" and await head.read() == b""

    # anything that send did not put there is not served
    for other in (f"/gateways/{wh.NAME}/media/{token[:-1]}x", f"/gateways/{wh.NAME}/media/{'A' * 43}",
                  f"/gateways/{wh.NAME}/media/..%2Fstatus"):
        assert (await wa.client.get(other)).status == 404


async def test_served_type_is_guessed_when_the_attachment_has_none(wa, wh):
    await wa.open_window()
    att = Attachment(name="report.pdf", data=b"%PDF-1.4 tiny")  # application/octet-stream by default
    await wa.gateway.send(wa.outbound("[alice] pdf", attachments=(att,)))
    resp = await wa.client.get(media_path(wh, wa.twilio.last()["MediaUrl"][0]))
    assert resp.headers["Content-Type"] == "application/pdf" and await resp.read() == b"%PDF-1.4 tiny"


async def test_a_hosted_file_expires_after_media_ttl(make_wa, wh):
    wa = await make_wa(media_ttl=60)
    clock = Clock()
    wa.gateway.media.clock = clock
    await wa.open_window()
    await wa.gateway.send(wa.outbound("[alice] look", attachments=(png(),)))
    path = media_path(wh, wa.twilio.last()["MediaUrl"][0])
    clock.now += 59  # Twilio may fetch again (a retry) within the ttl
    assert (await wa.client.get(path)).status == 200
    clock.now += 2
    assert (await wa.client.get(path)).status == 404
    assert len(wa.gateway.media) == 0 and wa.gateway.media.bytes == 0


async def test_the_cache_bound_drops_the_oldest_and_describes_what_cannot_fit(make_wa, wh):
    wa = await make_wa(media_cache_bytes=10)
    await wa.open_window()
    await wa.gateway.send(wa.outbound("[alice] one", attachments=(png(b"A" * 6, name="a.png"),),
                                      idempotency_key="m1"))
    first = media_path(wh, wa.twilio.last()["MediaUrl"][0])
    await wa.gateway.send(wa.outbound("[alice] two", attachments=(png(b"B" * 6, name="b.png"),),
                                      idempotency_key="m2"))
    second = media_path(wh, wa.twilio.last()["MediaUrl"][0])
    assert (await wa.client.get(first)).status == 404  # made room for the newer file
    assert await (await wa.client.get(second)).read() == b"B" * 6
    assert wa.gateway.media.bytes == 6

    await wa.gateway.send(wa.outbound("[alice] three", attachments=(png(b"C" * 11, name="c.png"),),
                                      idempotency_key="m3"))
    sent = wa.twilio.last()
    assert "MediaUrl" not in sent and sent["Body"] == "[alice] three\n[image c.png, 11 B]"
    assert await (await wa.client.get(second)).read() == b"B" * 6  # nothing was evicted for it


async def test_a_retried_send_reuses_the_file_it_already_offered(wa, wh):
    await wa.open_window()
    wa.twilio.fail(500, 20500, "Internal Server Error")
    out = wa.outbound("[alice] look", attachments=(png(),), idempotency_key="mesh:demo:m1|wa/x|1")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(out)
    assert not err.value.permanent
    await wa.gateway.send(out)
    urls = [[v for k, v in r if k == "MediaUrl"] for r in wa.twilio.requests]
    assert len(urls) == 2 and urls[0] == urls[1]
    assert len(wa.gateway.media) == 1 and wa.gateway.media.bytes == len(PNG)


async def test_without_a_public_url_bytes_are_described(make_wa):
    wa = await make_wa(public_url=None)
    await wa.open_window()
    await wa.gateway.send(wa.outbound("[alice] look", attachments=(png(b"1234"),)))
    sent = wa.twilio.last()
    assert "MediaUrl" not in sent
    assert sent["Body"] == "[alice] look\n[image cat.png, 4 B]"
    assert len(wa.gateway.media) == 0


async def test_media_limits_describe_larger_files(make_wa):
    wa = await make_wa(max_media_bytes=100, max_image_bytes=10)
    assert wa.gateway.capabilities.max_media_bytes == 100  # the core fetches at most that for us
    await wa.open_window()
    cases = [
        (png(b"x" * 11, name="big.png"), False),  # image over max_image_bytes
        (png(b"x" * 10, name="ok.png"), True),
        (Attachment(name="doc.pdf", content_type="application/pdf", data=b"x" * 50), True),  # not an image
        (Attachment(name="big.pdf", content_type="application/pdf", data=b"x" * 101), False),
        (Attachment(name="far.pdf", content_type="application/pdf", url="https://files.example/f.pdf",
                    size=101), False),  # a URL of known size counts too
    ]
    for att, offered in cases:
        await wa.gateway.send(wa.outbound("[alice] f", attachments=(att,)))
        sent = wa.twilio.last()
        assert ("MediaUrl" in sent) is offered, att.name
        assert (att.name in sent["Body"]) is not offered


async def test_default_limits_are_whatsapps(wa):
    cfg = WhatsAppConfig.model_fields
    assert cfg["max_media_bytes"].default == 16 * MB and cfg["max_image_bytes"].default == 5 * MB
    assert cfg["media_ttl"].default == 900 and cfg["media_cache_bytes"].default == 64 * MB
    await wa.open_window()
    # sizes known in advance: no big buffers needed
    big_image = Attachment(name="p.jpg", content_type="image/jpeg", url="https://f.example/p.jpg", size=5 * MB + 1)
    video = Attachment(name="v.mp4", content_type="video/mp4", url="https://f.example/v.mp4", size=6 * MB)
    huge = Attachment(name="h.mp4", content_type="video/mp4", url="https://f.example/h.mp4", size=16 * MB + 1)
    for att, offered in ((big_image, False), (video, True), (huge, False)):
        await wa.gateway.send(wa.outbound("[alice] f", attachments=(att,)))
        assert ("MediaUrl" in wa.twilio.last()) is offered, att.name


async def test_media_tokens_are_never_logged_nor_in_errors(wa, wh, caplog):
    caplog.set_level(logging.DEBUG)
    await wa.open_window()
    wa.twilio.fail(400, 21620, "Invalid media URL(s): {MediaUrl}")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound("[alice] look", attachments=(png(),)))
    (url,) = [v for k, v in wa.twilio.requests[-1] if k == "MediaUrl"]
    token = url.rsplit("/", 1)[1]
    assert "21620" in str(err.value) and token not in str(err.value)
    await wa.client.get(media_path(wh, url))
    # the core's redaction filter (on the handler configure_logging installs), with the pattern the
    # gateway declares (create_app registers it), scrubs every record, aiohttp's access log line included
    from claudemesh_gateway.logconfig import RedactionFilter, register_patterns

    register_patterns(type(wa.gateway).log_redactions)
    assert caplog.records and all(RedactionFilter().filter(r) for r in caplog.records)
    assert token not in "\n".join(r.getMessage() for r in caplog.records)

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    access = logging.getLogger("aiohttp.access")
    handler = Keep()
    handler.addFilter(RedactionFilter())  # what configure_logging puts on its handler
    access.addHandler(handler)
    try:
        line = f"GET /gateways/{wh.NAME}/media/{token} HTTP/1.1"
        access.warning('127.0.0.1 "%s" 200', line, extra={"first_request_line": line})
    finally:
        access.removeHandler(handler)
    (record,) = records
    assert token not in record.getMessage() and token not in record.first_request_line  # type: ignore[attr-defined]
    assert f"/gateways/{wh.NAME}/media/***" in record.getMessage()


class _KV:
    def __init__(self) -> None:
        self.data: dict[str, object] = {}

    async def kv_get(self, key: str) -> object:
        return self.data.get(key)

    async def kv_set(self, key: str, value: object) -> None:
        self.data[key] = value

    async def kv_delete(self, key: str) -> None:
        self.data.pop(key, None)


async def test_media_store_unit():
    clock = Clock()
    kv = _KV()
    store = MediaStore(kv, ttl=10, max_bytes=8, clock=clock)
    assert await store.put(b"", "image/png") is None  # nothing to serve
    assert await store.put(b"123456789", "image/png") is None  # larger than the whole store
    a = await store.put(b"1234", "image/png", key="k")
    assert a is not None and await store.put(b"1234", "image/png", key="k") == a  # same part, same file
    b = await store.put(b"5678", "image/png")
    c = await store.put(b"90", "image/png")  # 4 + 4 + 2 > 8: the oldest goes
    assert await store.get(a) is None and await store.get(b) is not None and await store.get(c) is not None
    assert f"media:{a}" not in kv.data  # its bytes left the store too
    assert store.bytes == 6 and await store.put(b"12", "image/png", key="k") not in (None, a)
    clock.now += 10
    assert await store.get(b) is None and len(store) == 0 and store.bytes == 0
    assert [k for k in kv.data if k.startswith("media:")] == []


# -- back to WhatsApp: a file of this gateway re-sent to another of its chats --------------------------------------
async def test_own_reference_arrives_with_its_bytes_from_the_core(wa, wh):
    """WhatsApp cannot reuse its own media (capabilities.reuses_own_files is False): the core fetches
    them (tests/routing/test_routing_files.py), so a reference without bytes is only described."""
    assert not type(wa.gateway).capabilities.reuses_own_files
    url = wa.twilio.add_media(PNG, "image/png")
    ref = wa.gateway._media_ref(url)
    assert ref and ref.startswith(f"twilio:{wh.NAME}:/2010-04-01/")
    await wa.open_window()
    data = await wa.gateway.fetch_attachment(Attachment(name="ME1.png", content_type="image/png", url=ref), MB)
    att = Attachment(name="ME1.png", content_type="image/png", url=ref, data=data, size=len(data))
    await wa.gateway.send(wa.outbound("[Ada] look", attachments=(att,)))
    (hosted,) = wa.twilio.last()["MediaUrl"]
    assert await (await wa.client.get(media_path(wh, hosted))).read() == PNG

    bare = Attachment(name="ME2.png", content_type="image/png", url=ref)
    fetched = len(wa.twilio.media_requests)
    await wa.gateway.send(wa.outbound("[Ada] bare", attachments=(bare,)))
    sent = wa.twilio.last()
    assert "MediaUrl" not in sent and sent["Body"] == "[Ada] bare\n[image ME2.png]"
    assert len(wa.twilio.media_requests) == fetched  # the gateway downloads nothing itself


# -- inbound: fetch_attachment ---------------------------------------------------------------------------------------
def ref_att(wa, url: str, name: str = "ME1.jpg", ctype: str = "image/jpeg") -> Attachment:
    ref = wa.gateway._media_ref(url)
    assert ref is not None
    return Attachment(name=name, content_type=ctype, url=ref)


async def test_fetch_attachment_with_auth_and_none_on_the_cdn_hop(wa, wh):
    data = bytes(range(256)) * 40
    att = ref_att(wa, wa.twilio.add_media(data))
    assert await wa.gateway.fetch_attachment(att, 1 * MB) == data
    (api,) = wa.twilio.media_requests
    (cdn,) = wa.twilio.cdn_requests
    assert api["Authorization"].startswith("Basic ")
    assert "Authorization" not in cdn


async def test_fetch_attachment_with_an_api_key(make_wa, wh):
    fake = wh.FakeTwilio(username=wh.API_KEY_SID, password=wh.API_KEY_SECRET)
    wa = await make_wa(fake=fake, api_key_sid=wh.API_KEY_SID, api_key_secret=wh.API_KEY_SECRET)
    att = ref_att(wa, fake.add_media(b"jpeg bytes"))
    assert await wa.gateway.fetch_attachment(att, 100) == b"jpeg bytes"
    assert "Authorization" not in fake.cdn_requests[0]


@pytest.mark.parametrize("chunked", [False, True])
async def test_fetch_attachment_cap_is_permanent(wa, wh, chunked):
    wa.twilio.cdn_chunked = chunked  # without Content-Length the stream itself is capped
    att = ref_att(wa, wa.twilio.add_media(b"x" * 5000))
    assert await wa.gateway.fetch_attachment(att, 5000) == b"x" * 5000
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.fetch_attachment(att, 4999)
    assert err.value.permanent and "larger than 4999 bytes" in str(err.value)
    sized = Attachment(name="s.jpg", content_type="image/jpeg", url=att.url, size=10_000)
    before = len(wa.twilio.media_requests)
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.fetch_attachment(sized, 5000)  # known too large: not even requested
    assert err.value.permanent and len(wa.twilio.media_requests) == before


async def test_media_not_there_yet_is_asked_again_before_giving_up(wa, monkeypatch):
    from claudemesh_gateway.plugins.whatsapp import transport as wa_module

    monkeypatch.setattr(wa_module, "MEDIA_NOT_YET", (0.01, 0.01))
    att = ref_att(wa, wa.twilio.add_media(b"jpeg"))
    wa.twilio.media_errors.extend([404, 404])  # right after the webhook Twilio may not have it yet
    assert await wa.gateway.fetch_attachment(att, 100) == b"jpeg"
    wa.twilio.media_errors.extend([404, 404, 404])  # still missing after the short retries: gone
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.fetch_attachment(att, 100)
    assert err.value.permanent and "404" in str(err.value)


async def test_fetch_attachment_errors(wa, wh, monkeypatch):
    from claudemesh_gateway.plugins.whatsapp import transport as wa_module

    monkeypatch.setattr(wa_module, "MEDIA_NOT_YET", (0.01,))
    att = ref_att(wa, wa.twilio.add_media(b"jpeg"))
    gone = Attachment(name="ME9.jpg", content_type="image/jpeg", url=att.url[:-4] + "dead")
    errors: list[DeliveryError] = []

    with pytest.raises(DeliveryError) as err:  # 404: gone
        await wa.gateway.fetch_attachment(gone, 100)
    assert err.value.permanent
    errors.append(err.value)

    wa.twilio.media_errors.append(500)  # Twilio down: retried later
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.fetch_attachment(att, 100)
    assert not err.value.permanent
    errors.append(err.value)

    wa.twilio.media_errors.append(403)
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.fetch_attachment(att, 100)
    assert err.value.permanent
    errors.append(err.value)

    for bad in (f"twilio:other:{att.url.split(':', 2)[2]}",  # another gateway's
                f"twilio:{wh.NAME}:/2010-04-01/Accounts/{wh.ACCOUNT_SID}/Messages.json",  # not a media path
                "https://api.twilio.com/2010-04-01/x"):
        before = len(wa.twilio.media_requests)
        with pytest.raises(DeliveryError) as err:
            await wa.gateway.fetch_attachment(Attachment(name="x", url=bad), 100)
        assert err.value.permanent and len(wa.twilio.media_requests) == before
    assert await wa.gateway.fetch_attachment(att, 100) == b"jpeg"  # the errors were one-offs

    await wa.twilio.server.close()  # network error: transient
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.fetch_attachment(att, 100)
    assert not err.value.permanent
    errors.append(err.value)

    for e in errors:
        text = str(e)
        for secret in ("http", "twilio.com", "127.0.0.1", "/2010-04-01", wh.ACCOUNT_SID, wh.AUTH_TOKEN, "Basic"):
            assert secret not in text, (secret, text)
