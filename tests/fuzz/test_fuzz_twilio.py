"""Fuzz: Twilio (WhatsApp) inbound message webhooks and status callbacks, form and JSON, each with a
valid ``X-Twilio-Signature`` computed here so the fuzz reaches the parser behind it.

Invariant: 200 (TwiML) or a 4xx with nothing submitted, never a 5xx; a good inbound message right after
still reaches the core.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import urllib.parse
from typing import Any

from hypothesis import strategies as st

from .conftest import fuzz, json_values, nasty_text, wa_fakes, with_deep_json

_ids = itertools.count(1)
INBOUND_KEYS = ["MessageSid", "SmsMessageSid", "From", "To", "Body", "NumMedia", "ProfileName", "WaId",
                "AccountSid", "OriginalRepliedMessageSid", "ButtonText", "Latitude", "Longitude", "Address",
                "Label", "MediaUrl0", "MediaContentType0", "MediaUrl1", "MediaContentType1", "MediaUrl9"]
STATUS_KEYS = ["MessageSid", "MessageStatus", "To", "From", "ErrorCode", "ErrorMessage", "AccountSid"]
media_urls = st.sampled_from([
    "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM1/Media/ME1", "http://127.0.0.1:1/x",
    "https://api.twilio.com/../../etc/passwd", "https://evil.example/Media/ME1", "file:///etc/passwd",
    "https://user:pw@api.twilio.com/2010-04-01/Accounts/ACx/Messages/MMx/Media/MEx", "", "https://"]) | nasty_text
form_values = nasty_text | st.integers(-(2**70), 2**70).map(str) | media_urls


@st.composite
def forms(draw: Any, base: dict[str, str], keys: list[str]) -> dict[str, str]:
    out = dict(base)
    for key in draw(st.lists(st.sampled_from(keys), max_size=5, unique=True)):
        if draw(st.booleans()):
            out[key] = draw(form_values)
        else:
            out.pop(key, None)
    out.update(draw(st.dictionaries(st.text(min_size=1, max_size=10), nasty_text, max_size=2)))
    return out


def _base_status() -> dict[str, str]:
    sid = "SM" + "f" * 32
    return {"MessageSid": sid, "SmsSid": sid, "MessageStatus": "failed", "SmsStatus": "failed",
            "AccountSid": wa_fakes.ACCOUNT_SID, "From": wa_fakes.FROM, "To": wa_fakes.USER, "ErrorCode": "30008"}


@st.composite
def twilio_requests(draw: Any) -> tuple[str, str, Any]:
    leaf = draw(st.sampled_from(["inbound", "status"]))
    encoding = draw(st.sampled_from(["form", "form", "json"]))
    if leaf == "inbound":
        params: Any = draw(forms(wa_fakes.inbound_params(), INBOUND_KEYS))
    else:
        params = draw(forms(_base_status(), STATUS_KEYS))
    if encoding == "json":
        # JSON webhooks may carry any JSON value per field (absurd nesting: the raw deep_json bodies below)
        if draw(st.booleans()):
            key = draw(st.sampled_from(sorted(params)))
            params[key] = draw(json_values)
        if draw(st.integers(0, 9)) == 0:
            params = draw(json_values)
    return leaf, encoding, params


def _json_request(leaf: str, body: bytes) -> tuple[str, dict[str, str]]:
    digest = hashlib.sha256(body).hexdigest()
    url = f"{wa_fakes.PUBLIC_URL}/gateways/{wa_fakes.NAME}/{leaf}?bodySHA256={digest}"
    mac = hmac.new(wa_fakes.AUTH_TOKEN.encode(), url.encode(), hashlib.sha1).digest()
    return f"/gateways/{wa_fakes.NAME}/{leaf}?bodySHA256={digest}", {
        "X-Twilio-Signature": base64.b64encode(mac).decode(), "Content-Type": "application/json"}


async def test_fuzz_twilio_webhooks(wa):
    async def one(case: tuple[str, str, Any]) -> None:
        leaf, encoding, params = case
        before = len(wa.ctx.submitted)
        if encoding == "raw":
            path, headers = _json_request(leaf, params)
            resp = await wa.client.post(path, data=params, headers=headers)
        elif encoding == "form":
            # encoded here: aiohttp's client refuses field names with control characters, a server must not
            url = f"{wa_fakes.PUBLIC_URL}/gateways/{wa_fakes.NAME}/{leaf}"
            resp = await wa.client.post(f"/gateways/{wa_fakes.NAME}/{leaf}", data=urllib.parse.urlencode(params),
                                        headers={"X-Twilio-Signature": wa_fakes.sign(params, url),
                                                 "Content-Type": "application/x-www-form-urlencoded"})
        else:
            path, headers = _json_request(leaf, json.dumps(params).encode())
            resp = await wa.client.post(path, data=json.dumps(params).encode(), headers=headers)
        assert resp.status in (200, 400), (resp.status, await resp.text(), params)
        if resp.status != 200:
            assert len(wa.ctx.submitted) == before
        n = next(_ids)
        resp = await wa.inbound(wa_fakes.inbound_params(sid="SM" + f"{n:032x}", body=f"good {n}"))
        assert resp.status == 200 and wa.ctx.submitted[-1].text == f"good {n}"

    raw = st.tuples(st.sampled_from(["inbound", "status"]), st.just("raw"),
                    with_deep_json(st.binary(max_size=100)))
    await fuzz(twilio_requests() | raw, one)


def test_fuzz_twilio_json_signature_helper_matches_the_gateway():
    """The signature this file computes for JSON webhooks is the one the gateway checks (a test of the test)."""
    from claudemesh_gateway.plugins.whatsapp.signature import verify_signature

    body = b'{"MessageSid": "SM1"}'
    path, headers = _json_request("inbound", body)
    url = wa_fakes.PUBLIC_URL + urllib.parse.unquote(path)
    assert verify_signature(wa_fakes.AUTH_TOKEN, url, None, headers["X-Twilio-Signature"], raw_body=body)
    assert not verify_signature(wa_fakes.AUTH_TOKEN, url, None, headers["X-Twilio-Signature"], raw_body=body + b" ")
