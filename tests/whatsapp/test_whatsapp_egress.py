"""Mesh -> WhatsApp: messages.create against the fake Twilio REST API."""

from __future__ import annotations

import json
import logging

import pytest
from claudemesh_gateway import Attachment, DeliveryError, GatewayState, SendResult
from claudemesh_gateway.plugins.whatsapp.config import WhatsAppBindingOptions

TEMPLATE = "HX" + "ab" * 16


async def test_send_posts_attributed_text_with_from_to_and_status_callback(wa, wh):
    await wa.open_window()
    result = await wa.gateway.send(wa.outbound("[alice] deploy finished ✅"))
    assert isinstance(result, SendResult)
    assert len(result.native_ids) == 1 and result.native_ids[0].startswith("SM")
    sent = wa.twilio.last()
    assert sent["Body"] == "[alice] deploy finished ✅"
    assert sent["To"] == wh.USER
    assert sent["From"] == wh.FROM
    assert sent["StatusCallback"] == f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/status"
    assert "ContentSid" not in sent and "MessagingServiceSid" not in sent


async def test_messaging_service_and_api_key_auth(make_wa, wh):
    fake = wh.FakeTwilio(username=wh.API_KEY_SID, password=wh.API_KEY_SECRET)
    wa = await make_wa(fake=fake, from_number=None, messaging_service_sid="MG" + "1" * 32,
                       api_key_sid=wh.API_KEY_SID, api_key_secret=wh.API_KEY_SECRET, status_callback=False)
    await wa.open_window()
    await wa.gateway.send(wa.outbound())
    sent = fake.last()
    assert sent["MessagingServiceSid"] == "MG" + "1" * 32
    assert "From" not in sent and "StatusCallback" not in sent


async def test_two_parts_arrive_in_order(wa):
    """The core splits a 2,000-character text at max_text=1600; the parts go out in order."""
    assert wa.gateway.capabilities.max_text == 1600
    await wa.open_window()
    part1, part2 = "a" * 1600, "b" * 400
    r1 = await wa.gateway.send(wa.outbound(part1, part=1, parts=2))
    r2 = await wa.gateway.send(wa.outbound(part2, part=2, parts=2))
    bodies = [dict(req)["Body"] for req in wa.twilio.requests]
    assert bodies == [part1, part2]
    assert r1.native_ids != r2.native_ids


async def test_outside_window_uses_template(wa, wh):
    await wa.open_window(age_s=25 * 3600)  # last inbound 25 h ago
    opts = WhatsAppBindingOptions(outside_window="template", template_content_sid=TEMPLATE,
                                  template_variables={"1": "{sender}", "2": "{text}"})
    await wa.gateway.send(wa.outbound("[alice] line one\nline {two}", options=opts))
    sent = wa.twilio.last()
    assert sent["ContentSid"] == TEMPLATE
    assert "Body" not in sent
    assert json.loads(sent["ContentVariables"]) == {"1": "alice", "2": "[alice] line one line {two}"}


async def test_never_written_number_is_outside_window_and_held(wa):
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert err.value.permanent
    assert "outside WhatsApp 24-hour window and no template configured" in str(err.value)
    assert wa.twilio.requests == []


async def test_twilio_63016_is_permanent_and_closes_window(wa, wh):
    await wa.open_window()
    wa.twilio.fail(400, 63016, "Failed to send freeform message because you are outside the allowed window.")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert err.value.permanent and "24-hour window" in str(err.value)
    assert not await wa.gateway.in_window(wh.USER)


async def test_429_is_transient_with_retry_after(wa):
    await wa.open_window()
    wa.twilio.fail(429, 20429, "Too Many Requests", headers={"Retry-After": "7"})
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert not err.value.permanent
    assert err.value.retry_after == 7.0


@pytest.mark.parametrize("header", ["99999", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_429_retry_after_is_read_by_the_core_parser(wa, header):
    """Seconds beyond the cap are capped; an HTTP-date is understood (one already past: 0 s)."""
    from claudemesh_gateway.retry_after import RETRY_AFTER_CAP, parse_retry_after

    await wa.open_window()
    wa.twilio.fail(429, 20429, "Too Many Requests", headers={"Retry-After": header})
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert not err.value.permanent
    assert err.value.retry_after == (RETRY_AFTER_CAP if header == "99999" else parse_retry_after(header))


async def test_5xx_is_transient(wa):
    await wa.open_window()
    wa.twilio.fail(500, 20500, "Internal Server Error")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert not err.value.permanent


async def test_21610_is_permanent_and_marks_opted_out(wa, wh):
    await wa.open_window()
    wa.twilio.fail(400, 21610, "Attempt to send to unsubscribed recipient")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert err.value.permanent and "opted out" in str(err.value)
    assert await wa.gateway.is_opted_out(wh.USER)
    with pytest.raises(DeliveryError):
        await wa.gateway.send(wa.outbound())
    assert len(wa.twilio.requests) == 1  # the second attempt never reached Twilio


async def test_other_4xx_is_permanent(wa):
    await wa.open_window()
    wa.twilio.fail(400, 21211, "The 'To' number is not a valid phone number.")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert err.value.permanent and "21211" in str(err.value)


async def test_bad_credentials_permanent_and_state(make_wa, wh):
    wa = await make_wa(auth_token="wrong_" + wh.AUTH_TOKEN)
    await wa.open_window()
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound())
    assert err.value.permanent
    assert wa.ctx.states[-1][0] == GatewayState.BAD_CREDENTIALS


async def test_not_a_whatsapp_address_is_permanent(wa):
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound(to="12345"))
    assert err.value.permanent


async def test_outbound_media_urls_one_file_per_message(wa):
    """WhatsApp takes one file per message: the first goes as MediaUrl, the others are described."""
    await wa.open_window()
    atts = (
        Attachment(name="a.png", content_type="image/png", url="https://files.example/a.png", size=1000),
        Attachment(name="b.pdf", content_type="application/pdf", url="https://files.example/b.pdf"),
        Attachment(name="c.jpg", content_type="image/jpeg", url="tgfile:tg:AgAD", size=2048),  # not fetched
    )
    await wa.gateway.send(wa.outbound("[alice] files", attachments=atts))
    sent = wa.twilio.last()
    assert sent["MediaUrl"] == ["https://files.example/a.png"]
    assert sent["Body"] == "[alice] files\n[application b.pdf]\n[image c.jpg, 2 KiB]"


async def test_rate_limits(make_wa, wh):
    wa = await make_wa(mps=25)
    (rl,) = wa.gateway.rate_limits(wa.outbound().to)
    assert rl.scope == f"whatsapp:{wh.NAME}:sender" and rl.per_second == 25
    sandbox = await make_wa(sandbox=True)
    (rl,) = sandbox.gateway.rate_limits(wa.outbound().to)
    assert rl.per_second == pytest.approx(1 / 3) and rl.burst == 1


async def test_credentials_never_logged_or_in_errors(make_wa, wh, caplog):
    caplog.set_level(logging.DEBUG)
    wa = await make_wa(api_key_sid=wh.API_KEY_SID, api_key_secret=wh.API_KEY_SECRET,
                       fake=wh.FakeTwilio(username=wh.API_KEY_SID, password=wh.API_KEY_SECRET))
    await wa.open_window()
    await wa.gateway.send(wa.outbound())
    errors = []
    for status, code in ((500, 20500), (400, 21211), (429, 20429)):
        wa.twilio.fail(status, code, f"boom {code}")
        with pytest.raises(DeliveryError) as err:
            await wa.gateway.send(wa.outbound())
        errors.append(str(err.value))
    resp = await wa.inbound(wh.inbound_params(), token="forged")
    assert resp.status == 403
    text = caplog.text + "\n".join(errors)
    assert caplog.records, "expected some log output to check"
    for secret in (wh.AUTH_TOKEN, wh.API_KEY_SECRET):
        assert secret not in text
    assert set(wa.ctx.secrets) == {wh.AUTH_TOKEN, wh.API_KEY_SECRET}  # handed to the core's redaction


async def test_63016_falls_back_to_the_template_at_once(wa, wh):
    await wa.open_window()  # we believe the window is open, Twilio disagrees
    wa.twilio.fail(400, 63016, "Failed to send freeform message because you are outside the allowed window.")
    opts = WhatsAppBindingOptions(outside_window="template", template_content_sid=TEMPLATE,
                                  template_variables={"1": "{text}"})
    result = await wa.gateway.send(wa.outbound("[alice] ping", options=opts))
    assert result.native_ids and len(wa.twilio.requests) == 2
    first, second = (dict(r) for r in wa.twilio.requests)
    assert first["Body"] == "[alice] ping" and "ContentSid" not in first
    assert second["ContentSid"] == TEMPLATE and "Body" not in second
    assert json.loads(second["ContentVariables"]) == {"1": "[alice] ping"}
    assert not await wa.gateway.in_window(wh.USER)


# -- Meta's messaging limit: unique users reached by business-initiated messages per rolling 24 h ----------------
def _template_opts() -> WhatsAppBindingOptions:
    return WhatsAppBindingOptions(outside_window="template", template_content_sid=TEMPLATE,
                                  template_variables={"1": "{text}"})


async def test_unique_recipient_cap_holds_new_recipients_without_calling_twilio(make_wa, wh):
    wa = await make_wa(daily_unique_users=2)
    users = ["whatsapp:+15550000001", "whatsapp:+15550000002", "whatsapp:+15550000003"]
    for u in users[:2]:
        await wa.gateway.send(wa.outbound("hi", to=u, options=_template_opts()))
    assert await wa.gateway.initiated_count() == 2
    # an already reached user costs no new slot
    await wa.gateway.send(wa.outbound("again", to=users[0], options=_template_opts()))
    sent_before = len(wa.twilio.requests)
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound("hi", to=users[2], options=_template_opts()))
    assert not err.value.permanent  # held and retried, never dead-lettered at once
    assert 23 * 3600 < err.value.retry_after <= 24 * 3600  # until the oldest slot frees
    assert "daily_unique_users" in str(err.value)
    assert len(wa.twilio.requests) == sent_before  # nothing was sent into error 63018
    # in-window (user-initiated) messages are not business-initiated and still go out
    await wa.open_window(users[2])
    await wa.gateway.send(wa.outbound("reply", to=users[2], options=_template_opts()))
    assert wa.twilio.last()["Body"] == "reply"


async def test_unique_recipient_slots_free_after_24h_and_survive_a_restart(make_wa, wh):
    wa = await make_wa(daily_unique_users=1)
    await wa.gateway.send(wa.outbound("hi", to="whatsapp:+15550000001", options=_template_opts()))
    # a restarted gateway (same store) still counts the slot
    again = type(wa.gateway)(wh.NAME, wa.gateway.config, wa.ctx)
    with pytest.raises(DeliveryError):
        await again.initiated.take("whatsapp:+15550000002")
    # 24 h later the slot is free again
    book = await wa.ctx.kv_get("initiated")
    await wa.ctx.kv_set("initiated", {n: t - 86401 for n, t in book.items()})
    again = type(wa.gateway)(wh.NAME, wa.gateway.config, wa.ctx)
    again._client = wa.gateway._client
    await again.send(wa.outbound("hi", to="whatsapp:+15550000002", options=_template_opts()))
    assert await again.initiated_count() == 1


async def test_a_failed_template_gives_its_slot_back(make_wa, wh):
    wa = await make_wa(daily_unique_users=1)
    wa.twilio.fail(400, 21211, "The 'To' number is not a valid phone number.")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound("hi", to="whatsapp:+15550000001", options=_template_opts()))
    assert err.value.permanent
    assert await wa.gateway.initiated_count() == 0
    await wa.gateway.send(wa.outbound("hi", to="whatsapp:+15550000002", options=_template_opts()))
    assert wa.twilio.last()["To"] == "whatsapp:+15550000002"


async def test_twilio_63018_is_held_and_retried_not_dead_lettered(wa):
    wa.twilio.fail(400, 63018, "Rate limit exceeded for Channel")
    with pytest.raises(DeliveryError) as err:
        await wa.gateway.send(wa.outbound("hi", to="whatsapp:+15550000001", options=_template_opts()))
    assert not err.value.permanent and err.value.retry_after == 300.0
    assert "63018" in str(err.value)
    assert await wa.gateway.initiated_count() == 0


async def test_zero_means_no_cap_and_no_bookkeeping(make_wa):
    wa = await make_wa(daily_unique_users=0)
    for i in range(5):
        await wa.gateway.send(wa.outbound("hi", to=f"whatsapp:+1555000000{i}", options=_template_opts()))
    assert len(wa.twilio.requests) == 5
    assert await wa.ctx.kv_get("initiated") is None  # nothing counted, nothing written


async def test_a_user_already_counted_is_not_rewritten_on_every_send(make_wa, monkeypatch):
    wa = await make_wa(daily_unique_users=10)
    writes = []
    real = wa.ctx.kv_set

    async def counting(key, value):
        if key == "initiated":
            writes.append(dict(value))
        await real(key, value)

    monkeypatch.setattr(wa.ctx, "kv_set", counting)
    for _ in range(5):
        await wa.gateway.send(wa.outbound("hi", to="whatsapp:+15550000001", options=_template_opts()))
    assert len(writes) == 1  # the new user; refreshes of its time wait for the next minute (or stop)
    await wa.gateway.stop()
    assert len(writes) == 2 and await wa.ctx.kv_get("initiated") == writes[-1]


async def test_a_template_names_the_files_it_cannot_carry(wa, wh):
    """Outside the window only a template may go out, and templates carry no media: the files are
    described in its text instead of silently dropped."""
    await wa.open_window(age_s=25 * 3600)
    opts = WhatsAppBindingOptions(outside_window="template", template_content_sid=TEMPLATE,
                                  template_variables={"1": "{text}"})
    photo = Attachment(name="chart.png", content_type="image/png", size=2048, data=b"\x89PNG" + b"0" * 2044)
    await wa.gateway.send(wa.outbound("[alice] see chart", options=opts, attachments=(photo,)))
    sent = wa.twilio.last()
    assert "MediaUrl" not in sent
    assert json.loads(sent["ContentVariables"]) == {"1": "[alice] see chart [image chart.png, 2 KiB]"}
