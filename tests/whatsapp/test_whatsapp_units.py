"""Units: signature helper, config models, text helpers, plugin registration."""

from __future__ import annotations

import hashlib
import json

import pytest
from claudemesh_gateway.plugins import whatsapp as plugin
from claudemesh_gateway.plugins.whatsapp.config import WhatsAppBindingOptions, WhatsAppConfig
from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
from claudemesh_gateway.plugins.whatsapp.signature import public_request_url, verify_signature
from claudemesh_gateway.plugins.whatsapp.text import (
    consent_keyword,
    mask_number,
    normalise_number,
    render_template_variables,
)
from claudemesh_gateway.plugins.whatsapp.wire import InboundForm, StatusForm
from pydantic import ValidationError
from twilio.request_validator import RequestValidator

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030",
          "To": "+18005551212"}


def test_signature_matches_twilio_reference_vector():
    # The documented example from Twilio's webhook-security page.
    assert RequestValidator(TOKEN).compute_signature(URL, PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert verify_signature(TOKEN, URL, PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not verify_signature(TOKEN, URL, PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ")
    assert not verify_signature(TOKEN, URL, dict(PARAMS, Digits="1235"), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not verify_signature("54321", URL, PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not verify_signature(TOKEN, URL, PARAMS, None)
    assert not verify_signature("", URL, PARAMS, "x")


def test_signature_accepts_explicit_default_port():
    sig = RequestValidator(TOKEN).compute_signature("https://mycompany.com:443/myapp.php?foo=1&bar=2", PARAMS)
    assert verify_signature(TOKEN, URL, PARAMS, sig)


def test_signature_json_body_sha256_variant():
    body = json.dumps({"MessageSid": "SM1", "MessageStatus": "sent"}).encode()
    url = f"https://gw.example.com/gateways/wa/status?bodySHA256={hashlib.sha256(body).hexdigest()}"
    sig = RequestValidator(TOKEN).compute_signature(url, {})
    assert verify_signature(TOKEN, url, None, sig, raw_body=body)
    assert not verify_signature(TOKEN, url, None, sig, raw_body=body + b" ")
    no_hash = "https://gw.example.com/gateways/wa/status"
    assert not verify_signature(TOKEN, no_hash, None, RequestValidator(TOKEN).compute_signature(no_hash, {}),
                                raw_body=body)


def test_signature_webhook_rule_shared_key():
    header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    shared = "shared-key-secret"
    sig256 = RequestValidator(shared).compute_signature(URL, PARAMS, "HMAC_SHA256")
    assert verify_signature(TOKEN, URL, PARAMS, sig256, settings_header=header, shared_key=shared)
    assert not verify_signature(TOKEN, URL, PARAMS, sig256, settings_header=header)  # no key configured
    assert not verify_signature(TOKEN, URL, PARAMS, sig256, settings_header=header, shared_key="other")
    # the auth-token signature does not pass when the header says a rule's key signed it
    sig = RequestValidator(TOKEN).compute_signature(URL, PARAMS)
    assert not verify_signature(TOKEN, URL, PARAMS, sig, settings_header=header, shared_key=shared)
    assert verify_signature(TOKEN, URL, PARAMS, sig, settings_header="")
    assert not verify_signature(TOKEN, URL, PARAMS, sig, settings_header="key=k,algorithm=HMAC_MD5",
                                shared_key=TOKEN)


def test_public_request_url():
    assert public_request_url("https://gw.example.com/", "/gateways/wa/inbound") == \
        "https://gw.example.com/gateways/wa/inbound"
    assert public_request_url("https://ex.com/prefix", "/gateways/wa/status", "a=1") == \
        "https://ex.com/prefix/gateways/wa/status?a=1"


def _cfg(**over):
    base = {"account_sid": "AC" + "1" * 32, "auth_token": "t", "from_number": "whatsapp:+14155238886"}
    base.update(over)
    return WhatsAppConfig.model_validate(base)


def test_config_validation():
    cfg = _cfg(from_number="+14155238886", public_url="https://gw.example.com/")
    assert cfg.from_number == "whatsapp:+14155238886" and cfg.public_url == "https://gw.example.com"
    assert cfg.mps == 80 and cfg.session_window_h == 24 and cfg.status_callback and not cfg.sandbox
    assert "tok3n" not in repr(_cfg(auth_token="tok3n"))
    with pytest.raises(ValidationError, match="from_number"):
        _cfg(from_number=None)
    with pytest.raises(ValidationError):
        _cfg(from_number="whatsapp:4155238886")
    with pytest.raises(ValidationError):
        _cfg(api_key_sid="SK" + "1" * 32)  # secret missing
    with pytest.raises(ValidationError):
        _cfg(unknown_key=1)
    with pytest.raises(ValidationError):
        _cfg(public_url="gw.example.com")
    assert _cfg(from_number=None, messaging_service_sid="MG" + "2" * 32).messaging_service_sid


def test_binding_options_validation():
    assert WhatsAppBindingOptions().outside_window == "hold"
    with pytest.raises(ValidationError, match="template_content_sid"):
        WhatsAppBindingOptions(outside_window="template")
    opts = WhatsAppBindingOptions(allow_numbers=["+15551230001"])
    assert opts.allow_numbers == ("whatsapp:+15551230001",)
    with pytest.raises(ValidationError):
        WhatsAppBindingOptions(bogus=True)


def test_capabilities_declared():
    caps = WhatsAppGateway.capabilities
    assert (caps.max_text, caps.replies, caps.edits, caps.media, caps.formatting) == (1600, False, False, True,
                                                                                      "whatsapp")
    assert caps.max_media_bytes == 16 * 1024 * 1024
    assert WhatsAppGateway.kind == "whatsapp"


def test_register_gateways_hookimpl():
    got = []
    plugin.register_gateways(register=got.append)
    assert got == [WhatsAppGateway]


def test_text_helpers():
    assert consent_keyword("  Stop\n") == "out" and consent_keyword("start") == "in"
    assert consent_keyword("stop it") is None
    assert normalise_number("+4915112345678") == "whatsapp:+4915112345678"
    assert mask_number("whatsapp:+4915112345678") == "whatsapp:+49…5678"
    vars_ = render_template_variables({"1": "{sender}", "2": "{text} ({nope})", "3": "{0}"},
                                      {"sender": "bob", "text": "a\n\tb   {x}"})
    assert vars_ == {"1": "bob", "2": "a b {x} ({nope})", "3": "{0}"}
    assert len(render_template_variables({"1": "{text}"}, {"text": "x" * 5000})["1"]) == 1024


def test_wire_models():
    form = InboundForm.model_validate({"MessageSid": "SM1", "From": "whatsapp:+1555", "NumMedia": "1",
                                       "MediaUrl0": "https://x/ME1", "MediaContentType0": "image/png"})
    assert [m.url for m in form.media()] == ["https://x/ME1"]
    with pytest.raises(ValidationError):
        InboundForm.model_validate({"MessageSid": "SM1/../x", "From": "whatsapp:+1555"})
    st = StatusForm.model_validate({"MessageSid": "SM1", "MessageStatus": "Undelivered", "ErrorCode": 63016})
    assert st.failed and st.error_code == "63016"
