"""Inbound over Socket Mode: fake apps.connections.open + websocket envelopes -> ctx.submit."""

from __future__ import annotations

import asyncio

from claudemesh_gateway import GatewayState


async def test_socket_connects_and_reports_state(make_gateway, fake_slack):
    gw = await make_gateway()
    await fake_slack.wait_socket()
    for _ in range(100):
        if gw.state == GatewayState.CONNECTED:
            break
        await asyncio.sleep(0.02)
    assert gw.state == GatewayState.CONNECTED
    assert gw.bot_user_id == "UBOT" and gw.bot_id == "BBOT"
    assert fake_slack.connections_opened == 1
    # apps.connections.open was called with the app-level token, never the bot token
    assert [m for m, _ in fake_slack.calls][:2] == ["auth.test", "apps.connections.open"]
    await gw.stop()
    assert gw.state == GatewayState.STOPPED
    await gw.stop()  # idempotent


async def test_channel_message_submitted_and_acked(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    env = await fake_slack.push(
        sk.event_callback(sk.message_event("hi <@U2> in <#C2> see <https://x.org|docs> &amp; <!here>"))
    )
    assert env in fake_slack.acks
    [msg] = gw.ctx.submitted
    assert msg.id == f"slack:slack:{sk.TEAM}:C1:1700000100.000100"
    assert (msg.origin.gateway, msg.origin.chat, msg.origin.thread) == ("slack", "C1", None)
    assert msg.sender == "alice" and msg.sender_id == "U1"
    assert msg.text == "hi @Bob B in #random see docs (https://x.org) & @here"
    assert msg.native_id == "1700000100.000100" and msg.reply_to is None
    assert msg.created.timestamp() == 1700000100.0001


async def test_thread_reply_maps_to_reply_to_and_origin_thread(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    await fake_slack.push(
        sk.event_callback(
            sk.message_event("in thread", ts="1700000200.000200", thread_ts="1700000100.000100"),
            event_id="Ev2",
        )
    )
    [msg] = gw.ctx.submitted
    assert msg.reply_to == "1700000100.000100"
    assert msg.origin.thread == "1700000100.000100"
    # and back: a mesh reply to that Slack reply lands in the same thread (the parent)
    from claudemesh_gateway import Address, Message, Outbound

    m = Message(id="mesh:x:1", origin=Address("mesh", "m:#t"), sender="bot", text="ack")
    res = await gw.send(
        Outbound(message=m, to=Address("slack", "C1"), text="ack", reply_to="1700000200.000200")
    )
    assert fake_slack.posts["C1"][-1]["thread_ts"] == "1700000100.000100"
    assert res.thread == "1700000100.000100"


async def test_own_posts_bot_messages_and_noise_ignored(make_gateway, fake_slack, sk):
    gw = await make_gateway(bindings=[sk.binding("C1")])
    ignored = [
        sk.message_event("from us", user="UBOT", bot_id="BBOT", ts="1.1"),
        sk.message_event("our bot id", user=None, bot_id="BBOT", ts="1.2"),
        sk.message_event("other bot", subtype="bot_message", bot_id="BOTHER", user=None, ts="1.3"),
        sk.message_event("integration", bot_id="BOTHER", ts="1.4"),
        sk.message_event("joined", subtype="channel_join", ts="1.5"),
        sk.message_event("unbound channel", channel="C2", ts="1.6"),
    ]
    for i, ev in enumerate(ignored):
        await fake_slack.push(sk.event_callback(ev, event_id=f"EvI{i}"))
    await fake_slack.push(
        {"type": "event_callback", "event": {"type": "reaction_added"}},
    )
    await fake_slack.push({"text": "x"}, kind="interactive")
    await fake_slack.push(sk.event_callback(sk.message_event("human", ts="1.7"), event_id="EvH"))
    assert [m.text for m in gw.ctx.submitted] == ["human"]
    assert len(fake_slack.acks) == len(ignored) + 3  # everything acked


async def test_our_own_post_never_comes_back(make_gateway, fake_slack, sk):
    """Round trip: what send() posted, echoed by Slack as an event, is not submitted."""
    gw = await make_gateway(ignore_bots=False)
    from claudemesh_gateway import Address, Message, Outbound

    m = Message(id="mesh:x:2", origin=Address("mesh", "m:#t"), sender="alice", text="hello")
    ts = (await gw.send(Outbound(message=m, to=Address("slack", "C1"), text="alice: hello"))).native_ids[0]
    echo = sk.message_event("alice: hello", user="UBOT", bot_id="BBOT", app_id=sk.APP_ID, ts=ts)
    await fake_slack.push(sk.event_callback(echo, event_id="EvEcho"))
    other_bot = sk.message_event("ci passed", user=None, bot_id="BCI", ts="2.2")
    await fake_slack.push(sk.event_callback(other_bot, event_id="EvCI"))
    # ignore_bots = false: other bots are relayed, ours never
    assert [m.text for m in gw.ctx.submitted] == ["ci passed"]


async def test_allow_users_binding_option(make_gateway, fake_slack, sk):
    gw = await make_gateway(bindings=[sk.binding("C1", allow_users=("U2",))])
    await fake_slack.push(sk.event_callback(sk.message_event("alice", user="U1", ts="3.1"), event_id="E1"))
    await fake_slack.push(sk.event_callback(sk.message_event("bob", user="U2", ts="3.2"), event_id="E2"))
    assert [m.sender_id for m in gw.ctx.submitted] == ["U2"]


async def test_out_only_binding_is_not_inbound(make_gateway, fake_slack, sk):
    gw = await make_gateway(bindings=[sk.binding("C1", direction="out")])
    await fake_slack.push(sk.event_callback(sk.message_event("x"), event_id="E1"))
    assert gw.ctx.submitted == []


async def test_edits_and_deletes_inbound(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    orig = "1700000100.000100"
    changed = {
        "type": "message",
        "subtype": "message_changed",
        "channel": "C1",
        "ts": "1700000300.000300",
        "hidden": True,
        "message": {
            "type": "message",
            "user": "U1",
            "text": "fixed <!here>",
            "ts": orig,
            "edited": {"user": "U1", "ts": "1700000299.000000"},
        },
        "previous_message": {"type": "message", "user": "U1", "text": "fixd", "ts": orig},
    }
    await fake_slack.push(sk.event_callback(changed, event_id="EvE"))
    # metadata-only change (reply count, unfurl): same text -> not an edit
    same = {**changed, "ts": "1700000301.0", "message": {**changed["message"], "text": "fixd"}}
    await fake_slack.push(sk.event_callback(same, event_id="EvS"))
    deleted = {
        "type": "message",
        "subtype": "message_deleted",
        "channel": "C1",
        "ts": "1700000400.0",
        "deleted_ts": orig,
        "hidden": True,
        "previous_message": {"type": "message", "user": "U1", "text": "fixed", "ts": orig},
    }
    await fake_slack.push(sk.event_callback(deleted, event_id="EvD"))
    # deleting one of our own posts in Slack is not relayed
    own_deleted = {
        **deleted,
        "deleted_ts": "9.9",
        "previous_message": {"type": "message", "user": "UBOT", "bot_id": "BBOT", "text": "x", "ts": "9.9"},
    }
    await fake_slack.push(sk.event_callback(own_deleted, event_id="EvD2"))
    edit, delete = gw.ctx.submitted
    assert edit.id == f"slack:slack:{sk.TEAM}:C1:{orig}:edit:1700000299.000000"
    assert edit.edit_of == orig and edit.text == "fixed @here" and not edit.deleted
    assert delete.id == f"slack:slack:{sk.TEAM}:C1:{orig}:delete"
    assert delete.deleted and delete.edit_of == orig and delete.sender == "alice"


async def test_files_become_attachment_references_without_tokens(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    files = [
        {
            "id": "F1",
            "name": "plot.png",
            "title": "weekly plot",
            "mimetype": "image/png",
            "size": 2048,
            "url_private": "https://files.slack.com/files-pri/T-F1/plot.png",
            "permalink": "https://t.slack.com/f/F1",
        }
    ]
    await fake_slack.push(sk.event_callback(sk.message_event("see", subtype="file_share", files=files)))
    [msg] = gw.ctx.submitted
    [att] = msg.attachments
    assert (att.name, att.content_type, att.size, att.caption) == (
        "plot.png",
        "image/png",
        2048,
        "weekly plot",
    )
    assert att.url == "slackfile:slack:F1"  # a reference only this gateway reads (fetch_attachment)
    assert dict(msg.raw["files"][0]) == {"id": "F1", "permalink": "https://t.slack.com/f/F1"}
    assert "files.slack.com" not in repr(msg) and "files.slack.com" not in str(dict(msg.raw))
    assert sk.BOT_TOKEN not in repr(msg) and sk.BOT_TOKEN not in str(dict(msg.raw))


async def test_submit_failure_leaves_envelope_unacked_then_redelivery_once(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    gw.ctx.fail_submit = RuntimeError("store down")
    payload = sk.event_callback(sk.message_event("keep me"), event_id="EvR")
    env = await fake_slack.push(payload, wait_ack=False)
    await asyncio.sleep(0.3)
    assert env not in fake_slack.acks  # Slack will redeliver
    gw.ctx.fail_submit = None
    await fake_slack.push(payload)  # redelivery
    await fake_slack.push(payload)  # and a duplicate redelivery
    assert [m.text for m in gw.ctx.submitted] == ["keep me"]


async def test_name_resolution_is_cached(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    for i in range(5):
        await fake_slack.push(
            sk.event_callback(sk.message_event(f"m{i} <@U2> <#C2>", ts=f"5.{i}"), event_id=f"E{i}")
        )
    assert [m.sender for m in gw.ctx.submitted] == ["alice"] * 5
    assert all(m.text.endswith("@Bob B #random") for m in gw.ctx.submitted)
    assert [p["user"] for p in fake_slack.methods("users.info")] in (["U1", "U2"], ["U2", "U1"])
    assert len(fake_slack.methods("conversations.info")) == 1


async def test_user_profile_in_event_avoids_lookup(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    await fake_slack.push(
        sk.event_callback(
            sk.message_event("x", user="U9", user_profile={"display_name": "zed", "real_name": "Zed Z"})
        )
    )
    assert gw.ctx.submitted[0].sender == "zed"
    assert fake_slack.methods("users.info") == []


async def test_lookup_rate_limit_falls_back_to_ids_and_pauses(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    fake_slack.lookup_429.append(30)
    await fake_slack.push(sk.event_callback(sk.message_event("a", user="U2", ts="6.1"), event_id="E1"))
    await fake_slack.push(sk.event_callback(sk.message_event("b <@U1>", user="U2", ts="6.2"), event_id="E2"))
    assert [m.sender for m in gw.ctx.submitted] == ["U2", "U2"]
    assert gw.ctx.submitted[1].text == "b @U1"
    assert len(fake_slack.methods("users.info")) == 1  # paused for Retry-After, no hammering


async def test_disconnect_envelope_reconnects(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    first = await fake_slack.wait_socket()
    await first.send_json({"type": "disconnect", "reason": "refresh_requested"})
    for _ in range(200):
        if fake_slack.connections_opened >= 2 and fake_slack.sockets and fake_slack.sockets[-1] is not first:
            break
        await asyncio.sleep(0.02)
    assert fake_slack.connections_opened >= 2
    await fake_slack.push(sk.event_callback(sk.message_event("after refresh"), event_id="EvAfter"))
    assert [m.text for m in gw.ctx.submitted] == ["after refresh"]


async def test_app_token_revoked_after_start_is_bad_credentials_and_stops_retrying(
    make_gateway, fake_slack, caplog
):
    gw = await make_gateway()
    first = await fake_slack.wait_socket()
    fake_slack.connections_error = "token_revoked"
    await first.send_json({"type": "disconnect", "reason": "refresh_requested"})
    for _ in range(250):
        if gw.state == GatewayState.BAD_CREDENTIALS:
            break
        await asyncio.sleep(0.02)
    assert gw.state == GatewayState.BAD_CREDENTIALS
    assert "token_revoked" in gw.state_detail
    attempts = len(fake_slack.methods("apps.connections.open"))
    await asyncio.sleep(2.5)  # the SDK alone would ask again every ping_interval (1 s)
    assert len(fake_slack.methods("apps.connections.open")) == attempts
    assert gw.state == GatewayState.BAD_CREDENTIALS
    assert any("refused the app token" in r.getMessage() for r in caplog.records)
    assert not any(sk_secret in r.getMessage() for r in caplog.records for sk_secret in ("xapp-1", "xoxb-"))


async def test_slash_command_over_socket(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    await fake_slack.push(
        {
            "command": "/mesh",
            "text": "topics",
            "user_id": "U1",
            "user_name": "alice",
            "channel_id": "C1",
            "team_id": sk.TEAM,
            "trigger_id": "tr1",
        },
        kind="slash_commands",
    )
    [msg] = gw.ctx.submitted
    assert msg.is_command and msg.text == "/topics" and msg.origin.chat == "C1" and msg.sender_id == "U1"


async def test_bad_bot_token_is_bad_credentials(make_gateway, fake_slack):
    import pytest
    from claudemesh_gateway import StartupError

    fake_slack.auth_error = "invalid_auth"
    gw = await make_gateway(start=False)
    with pytest.raises(StartupError) as ei:
        await gw.start()
    assert gw.state == GatewayState.BAD_CREDENTIALS
    assert "xoxb" not in str(ei.value)


async def test_stop_drains_in_flight_envelopes_and_submits_nothing_after(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    for i in range(5):
        await fake_slack.push(
            sk.event_callback(sk.message_event(f"m{i}", ts=f"8.{i}"), event_id=f"E{i}"), wait_ack=False
        )
    await gw.stop()
    after_stop = list(gw.ctx.attempts)
    await asyncio.sleep(0.2)
    assert gw.ctx.attempts == after_stop
    # whatever was acked had been submitted first
    acked_texts = len(fake_slack.acks)
    assert acked_texts <= len(gw.ctx.submitted)


async def test_slow_lookup_does_not_let_a_later_message_overtake(make_gateway, fake_slack, sk):
    gw = await make_gateway(lookup_timeout=0.5)
    fake_slack.lookup_delay["U2"] = 0.3
    await fake_slack.push(
        sk.event_callback(sk.message_event("first", user="U2", ts="9.1"), event_id="E1"), wait_ack=False
    )
    await fake_slack.push(
        sk.event_callback(
            sk.message_event("second", user="U9", ts="9.2", user_profile={"display_name": "nine"}),
            event_id="E2",
        )
    )
    await gw.ctx.wait_for(2)
    assert [m.text for m in gw.ctx.submitted] == ["first", "second"]
    assert gw.ctx.submitted[0].sender == "Bob B"  # waited for the name, within lookup_timeout


async def test_socket_mode_is_held_by_one_replica_and_taken_over(make_gateway, fake_slack, http_session, sk):
    """Several replicas: only the holder of the "socket" lease opens Socket Mode; a standby replica
    is healthy, opens no socket, takes over when the lease comes to it and closes when it goes."""
    from claudemesh_gateway.testing import RecordingContext

    ctx = RecordingContext("slack", http_session, [sk.binding("C1")])
    ctx.exclusive_held["socket"] = False  # another replica holds it
    gw = await make_gateway(ctx=ctx, start=False)
    gw.standby_interval = 0.02
    await gw.start()
    await asyncio.sleep(0.2)
    assert fake_slack.connections_opened == 0
    assert gw.state == GatewayState.CONNECTED and "standby" in gw.state_detail
    ctx.exclusive_held["socket"] = True  # the holder went away
    await fake_slack.wait_socket()
    assert fake_slack.connections_opened == 1
    for _ in range(100):
        if gw.state == GatewayState.CONNECTED and "standby" not in gw.state_detail:
            break
        await asyncio.sleep(0.02)
    assert gw.state == GatewayState.CONNECTED and "standby" not in gw.state_detail
    ctx.exclusive_held["socket"] = False  # lost (expired while we were cut off)
    for _ in range(100):
        if "standby" in gw.state_detail:
            break
        await asyncio.sleep(0.02)
    assert "standby" in gw.state_detail
    await asyncio.sleep(0.1)
    assert fake_slack.connections_opened == 1  # no reconnect while another replica holds it
