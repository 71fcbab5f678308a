"""WhatsApp -> mesh: signed webhooks, dedup, consent, media, status callbacks."""

from __future__ import annotations

import time

import pytest
from claudemesh_gateway import Address, DeliveryError, DeliveryFailed, DeliveryStatus, MessageDropped

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


async def test_inbound_message_is_submitted(wa, wh):
    params = wh.inbound_params(body="hi from my phone")
    resp = await wa.inbound(params)
    assert resp.status == 200
    assert resp.content_type == "text/xml"
    assert await resp.text() == EMPTY_TWIML
    (msg,) = wa.ctx.submitted
    sid = params["MessageSid"]
    assert msg.id == f"whatsapp:{wh.NAME}:{sid}"
    assert msg.origin == Address(wh.NAME, wh.USER)
    assert msg.sender == "Ada" and msg.sender_id == wh.USER
    assert msg.text == "hi from my phone"
    assert msg.native_id == sid
    assert msg.attachments == ()
    # the user's message opened the 24-hour window: free-form replies are allowed now
    assert await wa.gateway.in_window(wh.USER)
    assert abs(wa.ctx.kv[f"window:{wh.USER}"] - time.time()) < 60


async def test_twiml_only_after_submit_returned(wa, wh):
    wa.ctx.fail_submit = RuntimeError("store down")
    resp = await wa.inbound(wh.inbound_params())
    assert resp.status == 500  # Twilio sees a failure, nothing was acknowledged
    assert wa.ctx.submitted == []


@pytest.mark.parametrize("attack", ["forged", "tampered", "other_url", "other_host", "missing"])
async def test_bad_signatures_rejected_and_nothing_submitted(wa, wh, attack):
    params = wh.inbound_params(body="transfer the money")
    kw = {}
    if attack == "forged":
        kw["token"] = "not-the-auth-token"
    elif attack == "tampered":
        kw["signature"] = wh.sign(params, f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/inbound")
        params = dict(params, Body="transfer ALL the money")
    elif attack == "other_url":  # a valid request for another endpoint, replayed here
        kw["signature"] = wh.sign(params, f"{wh.PUBLIC_URL}/gateways/other/inbound")
    elif attack == "other_host":  # signed for the local URL instead of the public one
        kw["signature"] = wh.sign(params, str(wa.client.make_url(f"/gateways/{wh.NAME}/inbound")))
    elif attack == "missing":
        kw["signature"] = ""
    resp = await wa.inbound(params, **kw)
    assert resp.status == 403
    assert wa.ctx.submitted == []
    assert wa.ctx.kv == {}  # not even the window was touched


async def test_query_string_is_part_of_signed_url(wa, wh):
    params = wh.inbound_params()
    url = f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/inbound?src=twilio"
    sig = wh.sign(params, url)
    ok = await wa.client.post(f"/gateways/{wh.NAME}/inbound?src=twilio", data=params,
                              headers={"X-Twilio-Signature": sig})
    assert ok.status == 200
    changed = await wa.client.post(f"/gateways/{wh.NAME}/inbound?src=evil", data=params,
                                   headers={"X-Twilio-Signature": sig})
    assert changed.status == 403
    assert len(wa.ctx.submitted) == 1


async def test_no_public_url_refuses_webhooks(make_wa, wh):
    wa = await make_wa(public_url=None)
    assert (await wa.inbound(wh.inbound_params())).status == 403
    assert wa.ctx.submitted == []
    assert any("public_url" in w for w in await wa.gateway.check())


async def test_server_public_url_is_the_fallback(make_wa, wh):
    wa = await make_wa(public_url=None, server_public_url=wh.PUBLIC_URL + "/")
    assert (await wa.inbound(wh.inbound_params())).status == 200  # signed over [server] public_url
    assert len(wa.ctx.submitted) == 1
    assert not any("public_url" in w for w in await wa.gateway.check())
    own = await make_wa(public_url="https://own.example.org", server_public_url=wh.PUBLIC_URL)
    assert own.gateway.public_url == "https://own.example.org"  # the gateway's own wins
    assert (await own.inbound(wh.inbound_params())).status == 403  # signed for the server URL, not this one


async def test_duplicate_message_sid_processed_once(wa, wh):
    params = wh.inbound_params()
    for _ in range(3):  # Twilio retries the same webhook
        assert (await wa.inbound(params)).status == 200
    assert len(wa.ctx.submitted) == 1


async def test_unbound_number_dropped(make_wa, wh):
    wa = await make_wa(bindings=[wh.binding(wh.USER), wh.binding(wh.OTHER, direction="out")])
    assert (await wa.inbound(wh.inbound_params(sender=wh.OTHER))).status == 200  # out-only binding
    assert (await wa.inbound(wh.inbound_params(sender="whatsapp:+15559990000"))).status == 200
    assert wa.ctx.submitted == []
    drops = [e for e in wa.ctx.events if isinstance(e, MessageDropped)]
    assert [d.reason for d in drops] == ["not_bound", "not_bound"]
    assert (await wa.inbound(wh.inbound_params(sender=wh.USER))).status == 200
    assert len(wa.ctx.submitted) == 1


async def test_allow_numbers_guard(make_wa, wh):
    wa = await make_wa(bindings=[wh.binding(wh.USER, allow_numbers=(wh.OTHER,)),
                                 wh.binding(wh.OTHER, allow_numbers=(wh.OTHER,))])
    await wa.inbound(wh.inbound_params(sender=wh.USER))  # its binding does not allow it
    await wa.inbound(wh.inbound_params(sender=wh.OTHER))
    assert [m.origin.chat for m in wa.ctx.submitted] == [wh.OTHER]
    assert any("allow_numbers" in w for w in await wa.gateway.check())
    await wa.open_window(wh.USER)
    with pytest.raises(DeliveryError):
        await wa.gateway.send(wa.outbound(to=wh.USER, options=wh.WhatsAppBindingOptions(allow_numbers=(wh.OTHER,))))


async def test_inbound_media_become_attachments(wa, wh):
    """Twilio's media URLs become references of this gateway (read with the account's credentials
    by fetch_attachment); a URL that is not Twilio's media stays as it came."""
    path = f"/2010-04-01/Accounts/{wh.ACCOUNT_SID}/Messages/MM1/Media"
    base = f"https://api.twilio.com{path}"
    params = wh.inbound_params(body="look", NumMedia="3",
                               MediaUrl0=f"{base}/ME111", MediaContentType0="image/jpeg",
                               MediaUrl1=f"{base}/ME222", MediaContentType1="application/pdf",
                               MediaUrl2="https://cdn.example/x/ME333", MediaContentType2="image/png")
    assert (await wa.inbound(params)).status == 200
    (msg,) = wa.ctx.submitted
    assert [(a.url, a.content_type) for a in msg.attachments] == [
        (f"twilio:{wh.NAME}:{path}/ME111", "image/jpeg"), (f"twilio:{wh.NAME}:{path}/ME222", "application/pdf"),
        ("https://cdn.example/x/ME333", "image/png")]
    assert msg.attachments[0].name.startswith("ME111") and msg.attachments[1].name == "ME222.pdf"
    for a in msg.attachments:  # no credentials smuggled into the references
        assert wh.AUTH_TOKEN not in a.url and "@" not in a.url and a.data is None


async def test_opt_out_until_start(wa, wh):
    await wa.open_window()
    resp = await wa.inbound(wh.inbound_params(body=" stop "))
    assert resp.status == 200 and await resp.text() == EMPTY_TWIML
    assert wa.ctx.submitted == []  # the keyword is not forwarded
    assert await wa.gateway.is_opted_out(wh.USER)
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert err.value.permanent and "opted out" in str(err.value)
    assert wa.twilio.requests == []
    # an ordinary message from an opted-out user still reaches the mesh, but sending stays blocked
    await wa.inbound(wh.inbound_params(body="just reading"))
    assert len(wa.ctx.submitted) == 1
    with pytest.raises(DeliveryError):
        await wa.gateway.send(wa.outbound())
    await wa.inbound(wh.inbound_params(body="START"))
    assert len(wa.ctx.submitted) == 1
    assert not await wa.gateway.is_opted_out(wh.USER)
    await wa.gateway.send(wa.outbound())
    assert len(wa.twilio.requests) == 1


@pytest.mark.parametrize("word", ["STOPALL", "unsubscribe", "Cancel", "END", "quit"])
async def test_all_opt_out_keywords(wa, wh, word):
    await wa.inbound(wh.inbound_params(body=word))
    assert await wa.gateway.is_opted_out(wh.USER)
    await wa.inbound(wh.inbound_params(body="unstop"))
    assert not await wa.gateway.is_opted_out(wh.USER)
    assert wa.ctx.submitted == []


async def test_yes_is_an_answer_unless_opted_out(wa, wh):
    await wa.inbound(wh.inbound_params(body="yes"))
    assert [m.text for m in wa.ctx.submitted] == ["yes"]
    await wa.inbound(wh.inbound_params(body="STOP"))
    await wa.inbound(wh.inbound_params(body="YES"))
    assert not await wa.gateway.is_opted_out(wh.USER)
    assert len(wa.ctx.submitted) == 1
    await wa.inbound(wh.inbound_params(body="please stop the deploy"))  # not the whole message
    assert not await wa.gateway.is_opted_out(wh.USER)
    assert len(wa.ctx.submitted) == 2


async def test_consent_notice_when_notify_status(make_wa, wh):
    wa = await make_wa(bindings=[wh.binding(notify_status=True)])
    await wa.inbound(wh.inbound_params(body="STOP"))
    (notice,) = wa.ctx.submitted
    assert notice.origin == Address(wh.NAME, wh.USER)
    assert "opted out" in notice.text


async def test_failed_status_emits_events_and_notice(make_wa, wh):
    wa = await make_wa(bindings=[wh.binding(notify_status=True)])
    await wa.open_window()
    sid = (await wa.gateway.send(wa.outbound())).native_ids[0]
    wa.ctx.origin_map[(wh.USER, sid)] = "mesh:demo:m1"
    assert (await wa.status(sid, "sent")).status == 200
    resp = await wa.status(sid, "undelivered", error="63016")
    assert resp.status == 200
    statuses = [(e.native_id, e.status, e.error) for e in wa.ctx.events if isinstance(e, DeliveryStatus)]
    assert statuses == [(sid, "sent", ""), (sid, "undelivered", "63016")]
    (failed,) = [e for e in wa.ctx.events if isinstance(e, DeliveryFailed)]
    assert failed.message.id == "mesh:demo:m1"
    assert failed.to == Address(wh.NAME, wh.USER) and failed.route == "ops" and failed.permanent
    assert "63016" in failed.error
    (notice,) = wa.ctx.submitted
    assert notice.origin == Address(wh.NAME, wh.USER)
    assert notice.text.startswith(f"⚠ delivery to {wh.USER} failed: 63016")
    assert notice.reply_to == sid  # the core maps it onto the original mesh message
    assert not await wa.gateway.in_window(wh.USER)  # 63016 means the window is closed
    recent = wa.ctx.kv["status:recent"]
    assert [r["status"] for r in recent] == ["sent", "undelivered"]
    # a retried callback is not reported twice
    await wa.status(sid, "undelivered", error="63016")
    assert len([e for e in wa.ctx.events if isinstance(e, DeliveryFailed)]) == 1
    assert len(wa.ctx.submitted) == 1


async def test_failed_status_without_notify_and_unknown_origin(wa, wh):
    resp = await wa.status("SM" + "9" * 32, "failed", error="30008")
    assert resp.status == 200
    (failed,) = [e for e in wa.ctx.events if isinstance(e, DeliveryFailed)]
    assert failed.message.native_id == "SM" + "9" * 32  # minimal message built by the plugin
    assert wa.ctx.submitted == []


async def test_status_callback_signature_checked(wa, wh):
    sid = "SM" + "1" * 32
    resp = await wa.status(sid, "failed", error="30008", token="forged")
    assert resp.status == 403
    resp = await wa.status(sid, "failed", error="30008",
                           url=f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/inbound")  # signed for the wrong leaf
    assert resp.status == 403
    assert wa.ctx.events == [] and wa.ctx.submitted == []


async def test_delivered_status_is_reported(wa, wh):
    await wa.status("SM" + "2" * 32, "read")
    (ev,) = wa.ctx.events
    assert isinstance(ev, DeliveryStatus) and ev.gateway == wh.NAME and ev.status == "read"


async def test_location_and_button_text(wa, wh):
    await wa.inbound(wh.inbound_params(body="", Latitude="52.52", Longitude="13.405", Label="Office"))
    await wa.inbound(wh.inbound_params(body="", ButtonText="Approve", ButtonPayload="approve-1"))
    assert [m.text for m in wa.ctx.submitted] == ["📍 52.52,13.405 Office", "Approve"]


async def test_sms_on_the_same_webhook_is_not_relayed(wa, wh):
    resp = await wa.inbound(wh.inbound_params(sender="+15551230001"))
    assert resp.status == 200 and await resp.text() == EMPTY_TWIML
    assert wa.ctx.submitted == [] and wa.ctx.kv == {}


async def test_slash_command_is_marked(wa, wh):
    await wa.inbound(wh.inbound_params(body="/topics"))
    (msg,) = wa.ctx.submitted
    assert msg.is_command and msg.text == "/topics"


async def test_webhook_rule_shared_key_signature(make_wa, wh):
    from twilio.request_validator import RequestValidator

    wa = await make_wa(webhook_shared_key="rule-shared-key")
    params = wh.inbound_params(body="via a webhook rule")
    url = f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/inbound"
    header = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}
    bad = RequestValidator(wh.AUTH_TOKEN).compute_signature(url, params, "HMAC_SHA256")
    resp = await wa.client.post(f"/gateways/{wh.NAME}/inbound", data=params,
                                headers={**header, "X-Twilio-Signature": bad})
    assert resp.status == 403 and wa.ctx.submitted == []
    good = RequestValidator("rule-shared-key").compute_signature(url, params, "HMAC_SHA256")
    resp = await wa.client.post(f"/gateways/{wh.NAME}/inbound", data=params,
                                headers={**header, "X-Twilio-Signature": good})
    assert resp.status == 200 and [m.text for m in wa.ctx.submitted] == ["via a webhook rule"]
    assert "rule-shared-key" in wa.ctx.secrets


async def test_signed_url_uses_the_raw_query_string(wa, wh):
    params = wh.inbound_params()
    url = f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/inbound?note=a%20b&x=1"
    resp = await wa.client.post(f"/gateways/{wh.NAME}/inbound?note=a%20b&x=1", data=params,
                                headers={"X-Twilio-Signature": wh.sign(params, url)})
    assert resp.status == 200 and len(wa.ctx.submitted) == 1
