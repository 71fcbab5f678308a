"""Ingress by long polling: updates -> ctx.submit, offsets, drops, state."""

from __future__ import annotations

import asyncio
import datetime as dt

from claudemesh_gateway import Address, GatewayState, MessageDropped


async def _started(gw):
    await gw.start()
    await gw.wait_ready(5)
    return gw


async def test_message_becomes_core_message(make_gateway, fake_tg, tg_binding, tg_token):
    gw, ctx = make_gateway(bindings=[tg_binding(-100200)])
    upd = fake_tg.add_message(-100200, "hello <mesh>", date=1_700_000_000)
    await _started(gw)
    [m] = await ctx.wait_for(1)
    mid = upd["message"]["message_id"]
    assert m.id == f"telegram:tg:-100200:{mid}"
    assert m.origin == Address("tg", "-100200", None)
    assert (m.sender, m.sender_id) == ("Ada Lovelace", "111")
    assert m.text == "hello <mesh>" and m.native_id == str(mid)
    assert m.reply_to is None and m.edit_of is None and not m.is_command
    assert m.tags == frozenset() and m.hops == 0 and m.attachments == ()
    assert m.created == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    calls = [name for name, _ in fake_tg.calls]
    assert calls.index("deleteWebhook") < calls.index("getUpdates")  # polling needs no webhook
    assert fake_tg.method_calls("getUpdates")[0]["allowed_updates"] == [
        "message", "edited_message", "channel_post", "edited_channel_post"]
    assert tg_token in ctx.secrets
    assert (GatewayState.CONNECTED, "polling") in ctx.states


async def test_forum_topic_and_replies(make_gateway, fake_tg, tg_binding):
    fake_tg.forum_chats.add("-100300")
    gw, ctx = make_gateway(bindings=[tg_binding(-100300)])
    fake_tg.add_message(-100300, "in topic", thread=9)
    fake_tg.add_message(-100300, "reply in topic", thread=9, reply_to=55)
    fake_tg.add_message(-100300, "plain reply", reply_to=56)
    await _started(gw)
    a, b, c = await ctx.wait_for(3)
    assert a.origin == Address("tg", "-100300", "9") and a.reply_to is None  # topic root is not a reply
    assert b.origin.thread == "9" and b.reply_to == "55"
    assert c.origin.thread is None and c.reply_to == "56"


async def test_reply_chain_thread_id_in_plain_supergroup_is_not_a_topic(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(-100301)])
    m = fake_tg.make_message(-100301, "x", reply_to=7)
    m["message_thread_id"] = 7  # non-forum supergroups set this for reply chains, without is_topic_message
    fake_tg.push(fake_tg.make_update(m))
    await _started(gw)
    [msg] = await ctx.wait_for(1)
    assert msg.origin.thread is None and msg.reply_to == "7"


async def test_thread_bound_route_only_takes_its_topic(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(-100302, 4, direction="in")])
    fake_tg.add_message(-100302, "other topic", thread=5)
    fake_tg.add_message(-100302, "our topic", thread=4)
    await _started(gw)
    [m] = await ctx.wait_for(1)
    assert m.text == "our topic"
    await asyncio.sleep(0.1)
    assert [e.reason for e in ctx.events if isinstance(e, MessageDropped)] == ["no_inbound_binding"]


async def test_edits_map_to_edit_of_with_distinct_ids(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(42)])
    orig = fake_tg.add_message(42, "v1")["message"]
    fake_tg.add_edit(orig, "v2", edit_date=1_700_000_100)
    fake_tg.add_edit(orig, "v3", edit_date=1_700_000_100)  # same second: still a distinct edit
    await _started(gw)
    m1, m2, m3 = await ctx.wait_for(3)
    assert m2.edit_of == m3.edit_of == str(orig["message_id"]) and m1.edit_of is None
    assert len({m1.id, m2.id, m3.id}) == 3
    assert m2.id.startswith(f"telegram:tg:42:{orig['message_id']}:edit:1700000100:")
    assert (m2.text, m3.text) == ("v2", "v3")


async def test_unbound_chat_dropped_with_event_and_one_short_reply(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(42)], reply_unauthorised="This bot only relays configured chats.")
    fake_tg.add_message(999, "let me in")
    fake_tg.add_message(999, "please")
    fake_tg.add_message(42, "bound")
    await _started(gw)
    [m] = await ctx.wait_for(1)
    assert m.text == "bound"
    await fake_tg.wait_sent(999, 1, limit_s=5)
    await asyncio.sleep(0.1)
    assert fake_tg.texts(999) == ["This bot only relays configured chats."]  # once, not per message
    drops = [e for e in ctx.events if isinstance(e, MessageDropped)]
    assert [d.reason for d in drops] == ["unbound_chat", "unbound_chat"]
    assert all(a.startswith("telegram:tg:42:") for a in ctx.attempts)


async def test_outbound_only_binding_and_denied_users_never_submitted(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(reply_unauthorised="no", bindings=[
        tg_binding(-1, direction="out"),
        tg_binding(-2, options={"allow_users": ["@Grace", "777"]}),
    ])
    fake_tg.add_message(-1, "out-only chat")
    fake_tg.add_message(-2, "not allowed", from_id=111, username="ada")
    fake_tg.add_message(-2, "allowed by id", from_id=777, username=None)
    fake_tg.add_message(-2, "allowed by name", from_id=888, username="grace")
    await _started(gw)
    msgs = await ctx.wait_for(2)
    await asyncio.sleep(0.1)
    assert [m.text for m in ctx.submitted] == ["allowed by id", "allowed by name"] == [m.text for m in msgs]
    assert fake_tg.texts(-1) == [] and fake_tg.texts(-2) == ["no"]  # no "unauthorised" reply where we post
    assert sorted(e.reason for e in ctx.events if isinstance(e, MessageDropped)) == ["denied", "no_inbound_binding"]


async def test_media_attachments_reference_files_without_the_token(make_gateway, fake_tg, tg_binding, tg_token):
    gw, ctx = make_gateway(bindings=[tg_binding(5)])
    fake_tg.add_message(5, None, caption="look", photo=[
        {"file_id": "small", "file_unique_id": "us", "width": 90, "height": 90, "file_size": 100},
        {"file_id": "big", "file_unique_id": "ub", "width": 1280, "height": 960, "file_size": 90_000}])
    fake_tg.add_message(5, None, document={"file_id": "doc1", "file_unique_id": "d1", "file_name": "spec.pdf",
                                           "mime_type": "application/pdf", "file_size": 2048})
    fake_tg.add_message(5, None, voice={"file_id": "v1", "file_unique_id": "v1u", "duration": 3,
                                        "mime_type": "audio/ogg", "file_size": 999})
    fake_tg.add_message(5, None, sticker={"file_id": "st1", "file_unique_id": "s1", "type": "regular", "width": 1,
                                          "height": 1, "is_animated": False, "is_video": False, "emoji": "👍"})
    fake_tg.add_message(5, None, new_chat_members=[{"id": 5, "is_bot": False, "first_name": "x"}])  # service
    await _started(gw)
    photo, doc, voice, sticker = await ctx.wait_for(4)
    [a] = photo.attachments
    assert (a.name, a.content_type, a.size, a.url) == ("photo_ub.jpg", "image/jpeg", 90_000, "tgfile:tg:big")
    assert photo.text == "look"
    assert doc.attachments[0].name == "spec.pdf" and doc.attachments[0].content_type == "application/pdf"
    assert doc.attachments[0].describe() == "[application spec.pdf, 2 KiB]"
    assert voice.attachments[0].content_type == "audio/ogg"
    assert sticker.attachments[0].caption == "👍"
    for m in (photo, doc, voice, sticker):
        assert tg_token not in repr(m) and all(tg_token not in (x.url or "") for x in m.attachments)
    await asyncio.sleep(0.1)
    assert len(ctx.attempts) == 4  # the service message carried nothing to relay


async def test_fetch_attachment_downloads_via_get_file(make_gateway, fake_tg, tg_binding):
    gw, _ctx = make_gateway(bindings=[tg_binding(5)], download_max_bytes=10)
    small = fake_tg.add_file(b"12345", "documents/a.bin")
    big = fake_tg.add_file(b"x" * 50, "documents/b.bin")
    from claudemesh_gateway import Attachment, DeliveryError
    assert await gw.fetch_attachment(Attachment(name="a", url=f"tgfile:tg:{small}")) == b"12345"
    try:
        await gw.fetch_attachment(Attachment(name="b", url=f"tgfile:tg:{big}"))
    except DeliveryError as exc:
        assert exc.permanent
    else:
        raise AssertionError("a file over download_max_bytes must not be downloaded")


async def test_commands_for_this_bot_only(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(-7)])
    fake_tg.add_message(-7, "/help@mesh_test_bot now", entities=[{"type": "bot_command", "offset": 0, "length": 19}])
    fake_tg.add_message(-7, "/peers", entities=[{"type": "bot_command", "offset": 0, "length": 6}])
    fake_tg.add_message(-7, "/help@other_bot", entities=[{"type": "bot_command", "offset": 0, "length": 15}])
    fake_tg.add_message(-7, "/start deeplink", entities=[{"type": "bot_command", "offset": 0, "length": 6}])
    await _started(gw)
    a, b, c, d = await ctx.wait_for(4)
    assert (a.is_command, a.text) == (True, "/help now")
    assert (b.is_command, b.text) == (True, "/peers")
    assert (c.is_command, c.text) == (False, "/help@other_bot")
    assert (d.is_command, d.text) == (True, "/help")  # Telegram's Start button shows the help
    assert [c["command"] for c in fake_tg.commands] == ["topics", "peers", "status", "dm", "help"]


async def test_channel_post_and_anonymous_admin_sender(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(-100400), tg_binding("@newsroom")])
    chan = {"id": -100500, "type": "channel", "title": "News", "username": "newsroom"}
    fake_tg.push({"update_id": 1, "channel_post": {"message_id": 3, "chat": chan, "sender_chat": chan,
                                                   "date": 1, "text": "breaking", "author_signature": "Ed"}})
    grp = fake_tg.chat_obj(-100400)
    fake_tg.push({"update_id": 2, "message": {
        "message_id": 4, "chat": grp, "sender_chat": grp, "date": 1, "text": "from an admin",
        "from": {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}}})
    await _started(gw)
    post, anon = await ctx.wait_for(2)
    assert post.origin.chat == "@newsroom" and post.sender == "Ed" and post.sender_id == "-100500"
    assert anon.sender == "Group -100400" and anon.sender_id == "-100400"


async def test_offset_persisted_after_submit_and_restart_neither_repeats_nor_loses(
        make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(1)])
    u1 = fake_tg.add_message(1, "one")
    u2 = fake_tg.add_message(1, "two")
    await _started(gw)
    await ctx.wait_for(2)
    for _ in range(100):
        if ctx.kv.get("offset") == u2["update_id"] + 1:
            break
        await asyncio.sleep(0.02)
    assert ctx.kv["offset"] == u2["update_id"] + 1
    await gw.stop()
    # while stopped, a new update arrives; a fresh process with the same store takes it once
    u3 = fake_tg.add_message(1, "three")
    gw2, ctx2 = make_gateway(bindings=[tg_binding(1)])
    ctx2.kv = dict(ctx.kv)
    await _started(gw2)
    [m] = await ctx2.wait_for(1)
    await asyncio.sleep(0.2)
    assert m.text == "three" and len(ctx2.attempts) == 1
    assert fake_tg.method_calls("getUpdates")[-1]["offset"] >= u3["update_id"] + 1 or ctx2.kv["offset"] == u3[
        "update_id"] + 1
    assert u1["update_id"] < u2["update_id"] < u3["update_id"]


async def test_crash_between_submit_and_offset_save_redelivers_same_id(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(1)])
    blocked = asyncio.Event()

    async def never_returns(key, value):  # the process "dies" inside the offset write
        blocked.set()
        await asyncio.Event().wait()

    ctx.kv_set = never_returns
    fake_tg.add_message(1, "once")
    await gw.start()
    await ctx.wait_for(1)
    await asyncio.wait_for(blocked.wait(), 5)
    gw._task.cancel()  # crash: no orderly stop, no offset saved
    await asyncio.gather(gw._task, return_exceptions=True)
    assert "offset" not in ctx.kv
    # restart on the same store and ledger
    gw2, _ = make_gateway(bindings=[tg_binding(1)], ctx=ctx)
    del ctx.kv_set  # the instance attribute; back to RecordingContext.kv_set
    await _started(gw2)
    for _ in range(200):
        if ctx.kv.get("offset"):
            break
        await asyncio.sleep(0.02)
    assert len(ctx.attempts) == 2 and ctx.attempts[0] == ctx.attempts[1]  # same stable id
    assert len(ctx.submitted) == 1  # the ledger took it once
    assert ctx.kv["offset"] > 0


async def test_submit_failure_is_not_acknowledged_and_retried(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(1)])
    ctx.fail_submit = RuntimeError("store is down")
    fake_tg.add_message(1, "keep me")
    await gw.start()
    for _ in range(100):
        if len(ctx.attempts) >= 2:
            break
        await asyncio.sleep(0.02)
    assert "offset" not in ctx.kv and ctx.submitted == []
    ctx.fail_submit = None
    [m] = await ctx.wait_for(1)
    assert m.text == "keep me"


async def test_conflict_409_reports_state_and_recovers(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(1)])
    fake_tg.fail_next("getUpdates", 409, "Conflict: terminated by other getUpdates request; make sure that only "
                                         "one bot instance is running", times=2)
    fake_tg.add_message(1, "after conflict")
    await gw.start()
    [m] = await ctx.wait_for(1)
    states = [s for s, _ in ctx.states]
    assert GatewayState.BAD_CREDENTIALS in states
    assert any("409" in d for s, d in ctx.states if s == GatewayState.BAD_CREDENTIALS)
    assert states[-1] == GatewayState.CONNECTED and m.text == "after conflict"


async def test_bad_token_is_bad_credentials_and_stops(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(1)], token="999:wrong-token")
    await gw.start()
    for _ in range(100):
        if ctx.states and ctx.states[-1][0] == GatewayState.BAD_CREDENTIALS:
            break
        await asyncio.sleep(0.02)
    assert ctx.states[-1][0] == GatewayState.BAD_CREDENTIALS
    await asyncio.sleep(0.1)
    assert fake_tg.method_calls("getUpdates") == []
    assert "999:wrong-token" not in ctx.states[-1][1]


async def test_network_down_is_transient_disconnect(make_gateway, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(1)], api_base="http://127.0.0.1:9")
    await gw.start()
    for _ in range(100):
        if len(ctx.states) >= 3:
            break
        await asyncio.sleep(0.02)
    assert GatewayState.TRANSIENT_DISCONNECT in [s for s, _ in ctx.states]
    await gw.stop()
    assert ctx.states[-1][0] == GatewayState.STOPPED


async def test_unexpected_ingress_failure_restarts_the_loop(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(1)])
    calls = {"n": 0}
    real_get = ctx.kv_get

    async def flaky_get(key):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("store not open yet")
        return await real_get(key)

    ctx.kv_get = flaky_get
    fake_tg.add_message(1, "still arrives")
    await gw.start()
    [m] = await ctx.wait_for(1)
    assert m.text == "still arrives" and calls["n"] >= 2
    assert any(s == GatewayState.TRANSIENT_DISCONNECT for s, _ in ctx.states)


async def test_standby_replica_does_not_poll_and_takes_over_from_the_stored_offset(
        make_gateway, fake_tg, tg_binding):
    """Several replicas: only the holder of the "poll" lease calls getUpdates (a second poller would
    get 409 Conflict); on takeover it starts from the offset the previous owner stored."""
    gw, ctx = make_gateway(bindings=[tg_binding(-5)])
    gw.standby_interval = 0.02
    ctx.exclusive_held["poll"] = False  # another replica holds it
    first = fake_tg.add_message(-5, "read by the other replica")
    await _started(gw)  # ready: standing by is a healthy state
    await asyncio.sleep(0.2)
    assert fake_tg.method_calls("getUpdates") == [] and ctx.submitted == []
    assert ctx.states[-1] == (GatewayState.CONNECTED, "standby: another replica polls this bot")
    ctx.kv["offset"] = first["update_id"] + 1  # what the owner stored before it died
    fake_tg.add_message(-5, "after the takeover")
    ctx.exclusive_held["poll"] = True
    [m] = await ctx.wait_for(1)
    assert m.text == "after the takeover"
    assert fake_tg.method_calls("getUpdates")[0]["offset"] == first["update_id"] + 1
    assert (GatewayState.CONNECTED, "polling") in ctx.states
