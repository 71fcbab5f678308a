"""Egress: Outbound -> Bot API calls, errors -> DeliveryError."""

from __future__ import annotations

import pytest
from claudemesh_gateway import Address, Attachment, DeliveryError, Message, Outbound


def _msg(text: str = "hi", **kw) -> Message:
    return Message(id="mesh:m1:abc", origin=Address("mesh", "m1:#ops"), sender="alice", text=text, **kw)


def _out(gw, chat, text, *, thread=None, options=None, msg=None, **kw) -> Outbound:
    m = msg or _msg(text)
    opts = gw.BindingOptions.model_validate(options or {})
    rendered = gw.render_text(m, text, opts)
    return Outbound(message=m, to=Address(gw.name, str(chat), thread), text=rendered if rendered is not None else text,
                    options=opts.model_dump(), **kw)


async def test_send_to_bound_chat_and_forum_topic_with_html_escaping(make_gateway, fake_tg):
    gw, _ = make_gateway()
    r1 = await gw.send(_out(gw, -1001, "[alice] a <b> & c"))
    r2 = await gw.send(_out(gw, -1002, "[bob] in topic", thread="77"))
    assert fake_tg.texts(-1001) == ["[alice] a <b> & c"]  # escaped, so shown literally
    sent = fake_tg.method_calls("sendMessage")
    assert sent[0]["parse_mode"] == "HTML" and sent[0]["text"] == "[alice] a &lt;b&gt; &amp; c"
    assert sent[0]["link_preview_options"] == {"is_disabled": True}
    assert sent[1]["message_thread_id"] == 77
    assert fake_tg.sent["-1002"][0]["message_thread_id"] == 77
    assert r1.native_ids == (str(fake_tg.sent["-1001"][0]["message_id"]),)
    assert r2.thread == "77"


async def test_binding_thread_option_and_notification_flags(make_gateway, fake_tg):
    gw, _ = make_gateway(link_preview=True)
    await gw.send(_out(gw, -1003, "x", options={"message_thread_id": 5, "disable_notification": True,
                                               "protect_content": True}))
    p = fake_tg.method_calls("sendMessage")[0]
    assert p["message_thread_id"] == 5 and p["disable_notification"] is True and p["protect_content"] is True
    assert p["link_preview_options"] == {"is_disabled": False}


async def test_reply_maps_to_reply_parameters(make_gateway, fake_tg):
    gw, _ = make_gateway()
    first = await gw.send(_out(gw, 42, "one"))
    second = await gw.send(_out(gw, 42, "two", reply_to=first.native_ids[0]))
    p = fake_tg.method_calls("sendMessage")[1]
    assert p["reply_parameters"] == {"message_id": int(first.native_ids[0]), "allow_sending_without_reply": True}
    assert fake_tg.sent["42"][1]["reply_to_message"]["message_id"] == int(first.native_ids[0])
    # a reply to a message that no longer exists is still delivered
    await gw.send(_out(gw, 42, "three", reply_to="999999"))
    assert fake_tg.texts(42) == ["one", "two", "three"]
    assert second.native_ids[0] != first.native_ids[0]


async def test_long_text_parts_arrive_in_order(make_gateway, fake_tg):
    gw, _ = make_gateway()
    body = "".join(f"line {i:04d} <tag> & more\n" for i in range(260))  # ~6,000 characters
    assert len(body) > 5000
    parts = [body[i:i + 4000] for i in range(0, len(body), 4000)]
    for n, part in enumerate(parts, 1):
        await gw.send(_out(gw, -1004, part, part=n, parts=len(parts)))
    assert "".join(fake_tg.texts(-1004)) == body
    assert len(fake_tg.sent["-1004"]) == 2


async def test_parse_error_falls_back_to_plain_text(make_gateway, fake_tg):
    gw, _ = make_gateway()
    # a render_text hook (or a split) produced broken HTML: never drop the message
    out = Outbound(message=_msg(), to=Address("tg", "-1005"), text="<b>bold without end &amp; more")
    res = await gw.send(out)
    calls = fake_tg.method_calls("sendMessage")
    assert len(calls) == 2 and calls[0]["parse_mode"] == "HTML" and "parse_mode" not in calls[1]
    assert fake_tg.texts(-1005) == ["bold without end & more"]
    assert res.native_ids


async def test_plain_mode_sends_no_parse_mode(make_gateway, fake_tg):
    gw, _ = make_gateway(parse_mode="plain")
    await gw.send(_out(gw, 7, "a <b> & c"))
    p = fake_tg.method_calls("sendMessage")[0]
    assert "parse_mode" not in p and p["text"] == "a <b> & c"


async def test_429_raises_retry_after_for_that_chat_only(make_gateway, fake_tg):
    gw, _ = make_gateway()
    fake_tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 7", chat=-1006, retry_after=7)
    with pytest.raises(DeliveryError) as err:
        await gw.send(_out(gw, -1006, "x"))
    assert err.value.retry_after == 7 and not err.value.permanent
    # another chat keeps flowing
    await gw.send(_out(gw, -1007, "y"))
    assert fake_tg.texts(-1007) == ["y"]


@pytest.mark.parametrize(("setup", "permanent"), [
    ("unknown", True), ("blocked", True), ("server", False),
])
async def test_error_classification(make_gateway, fake_tg, setup, permanent):
    gw, _ = make_gateway()
    if setup == "unknown":
        fake_tg.unknown_chats.add("-1008")
    elif setup == "blocked":
        fake_tg.blocked_chats.add("-1008")
    else:
        fake_tg.fail_next("sendMessage", 502, "Bad Gateway")
    with pytest.raises(DeliveryError) as err:
        await gw.send(_out(gw, -1008, "x"))
    assert err.value.permanent is permanent
    assert err.value.retry_after is None


async def test_network_error_is_transient_and_hides_the_token(make_gateway, http, tg_token):
    gw, _ = make_gateway(api_base="http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(DeliveryError) as err:
        await gw.send(_out(gw, 1, "x"))
    assert not err.value.permanent
    chain = []
    e: BaseException | None = err.value
    while e is not None:
        chain.append(repr(e) + str(e))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    assert tg_token not in "".join(chain)


async def test_chat_migrated_is_permanent_with_new_id(make_gateway, fake_tg):
    gw, _ = make_gateway()
    fake_tg.failures.append({"method": "sendMessage", "chat": None, "status": 400, "times": 1, "body": {
        "ok": False, "error_code": 400, "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": -100999}}})
    with pytest.raises(DeliveryError) as err:
        await gw.send(_out(gw, -55, "x"))
    assert err.value.permanent and "-100999" in str(err.value)


async def test_edit_uses_edit_message_text(make_gateway, fake_tg):
    gw, _ = make_gateway()
    r = await gw.send(_out(gw, -1009, "first"))
    r2 = await gw.send(_out(gw, -1009, "second <x>", edit_of=r.native_ids[0]))
    assert r2.native_ids == r.native_ids
    assert fake_tg.edits[-1]["text"] == "second <x>"
    # same text again: "not modified" is success
    r3 = await gw.send(_out(gw, -1009, "second <x>", edit_of=r.native_ids[0]))
    assert r3.native_ids == r.native_ids
    # the original is gone: post the new text instead of losing it
    r4 = await gw.send(_out(gw, -1009, "third", edit_of="424242"))
    assert r4.native_ids != r.native_ids and fake_tg.texts(-1009)[-1] == "(edited) third"


async def test_media_upload_and_caption(make_gateway, fake_tg):
    gw, _ = make_gateway()
    att = Attachment(name="report.pdf", content_type="application/pdf", data=b"%PDF-1.4 data")
    res = await gw.send(_out(gw, -1010, "[alice] the report", attachments=(att,)))
    doc = fake_tg.sent["-1010"][0]
    assert doc["document"]["file_name"] == "report.pdf" and doc["caption"] == "[alice] the report"
    assert len(res.native_ids) == 1
    photo = Attachment(name="p.png", content_type="image/png", data=b"\x89PNG....")
    await gw.send(_out(gw, -1010, "pic", attachments=(photo,)))
    assert "photo" in fake_tg.sent["-1010"][1]


async def test_media_with_long_text_sends_text_then_file(make_gateway, fake_tg):
    gw, _ = make_gateway()
    att = Attachment(name="a.txt", content_type="text/plain", data=b"abc")
    res = await gw.send(_out(gw, -1011, "x" * 1500, attachments=(att,)))
    assert len(res.native_ids) == 2
    assert fake_tg.sent["-1011"][0]["text"] == "x" * 1500 and "document" in fake_tg.sent["-1011"][1]


async def test_media_retry_does_not_resend_parts_already_delivered(make_gateway, fake_tg):
    gw, _ = make_gateway()
    att = Attachment(name="a.txt", content_type="text/plain", data=b"abc")
    fake_tg.fail_next("sendDocument", 502, "Bad Gateway")
    out = _out(gw, -1012, "y" * 1500, attachments=(att,), idempotency_key="k1")
    with pytest.raises(DeliveryError):
        await gw.send(out)
    res = await gw.send(out)
    assert len(fake_tg.sent["-1012"]) == 2 and len(res.native_ids) == 2


async def test_foreign_or_unusable_attachments_become_descriptions(make_gateway, fake_tg):
    gw, _ = make_gateway()
    other = Attachment(name="photo.jpg", content_type="image/jpeg", size=2048, url="tgfile:other_bot:XYZ")
    await gw.send(_out(gw, -1013, "look", attachments=(other,)))
    assert fake_tg.texts(-1013) == ["look\n[image photo.jpg, 2 KiB]"]
    # same bot: the file id is reused, nothing is downloaded
    fid = fake_tg.add_file(b"jpegdata", "photos/a.jpg")
    own = Attachment(name="a.jpg", content_type="image/jpeg", size=8, url=f"tgfile:tg:{fid}")
    await gw.send(_out(gw, -1013, "again", attachments=(own,)))
    assert fake_tg.method_calls("sendPhoto")[-1]["photo"] == fid
    # a file Telegram refuses: the description goes out instead
    bad = Attachment(name="b.jpg", content_type="image/jpeg", size=8, url="tgfile:tg:NOPE")
    await gw.send(_out(gw, -1013, "third", attachments=(bad,)))
    assert fake_tg.texts(-1013)[-1] == "third\n[image b.jpg, 8 B]"


async def test_rate_limits_declared_per_chat_group_global(make_gateway):
    gw, _ = make_gateway()
    private = {r.scope: r for r in gw.rate_limits(Address("tg", "42"))}
    assert set(private) == {"telegram:tg:chat:42", "telegram:tg:global"}
    assert private["telegram:tg:chat:42"].per_second == 1 and private["telegram:tg:chat:42"].burst == 3
    group = {r.scope: r for r in gw.rate_limits(Address("tg", "-100123", "5"))}
    assert group["telegram:tg:group:-100123"].per_second == pytest.approx(20 / 60)
    assert group["telegram:tg:group:-100123"].burst == 20
    assert group["telegram:tg:global"].per_second == 30


async def test_edit_of_a_file_copy_edits_its_caption(make_gateway, fake_tg):
    gw, _ = make_gateway()
    att = Attachment(name="r.pdf", content_type="application/pdf", data=b"%PDF")
    r = await gw.send(_out(gw, -1014, "v1 & more", attachments=(att,)))
    await gw.send(_out(gw, -1014, "v2 & more", edit_of=r.native_ids[0]))
    assert fake_tg.edits[-1]["caption"] == "v2 & more"
    assert fake_tg.method_calls("editMessageCaption")[0]["caption"] == "v2 &amp; more"


async def test_nothing_to_send_and_bad_thread(make_gateway, fake_tg):
    gw, _ = make_gateway()
    res = await gw.send(Outbound(message=_msg(), to=Address("tg", "-1015"), text="  "))
    assert res.native_ids == () and fake_tg.method_calls("sendMessage") == []
    with pytest.raises(DeliveryError) as err:
        await gw.send(Outbound(message=_msg(), to=Address("tg", "-1015", "general"), text="x"))
    assert err.value.permanent


async def test_file_over_upload_limit_is_described(make_gateway, fake_tg):
    gw, _ = make_gateway(upload_max_bytes=4)
    big = Attachment(name="big.bin", content_type="application/octet-stream", size=5, data=b"12345")
    await gw.send(_out(gw, -1016, "file", attachments=(big,)))
    assert fake_tg.method_calls("sendDocument") == []
    assert fake_tg.texts(-1016) == ["file\n[application big.bin, 5 B]"]
