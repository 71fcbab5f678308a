"""Outbound: mesh -> Slack channel through the fake Web API."""

from __future__ import annotations

import pytest
from claudemesh_gateway import Address, DeliveryError, GatewayState, Message, Outbound


def _msg(text: str = "hi", sender: str = "alice", **kw) -> Message:
    return Message(id="mesh:m:1", origin=Address("mesh", "m:#ops"), sender=sender, text=text, **kw)


def _out(gw, text: str, chat: str = "C1", *, message: Message | None = None, **kw) -> Outbound:
    message = message or _msg(text)
    return Outbound(message=message, to=Address(gw.name, chat, kw.pop("thread", None)), text=text, **kw)


async def test_post_with_attribution_and_escaping(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    res = await gw.send(_out(gw, "alice: look <https://x|here> & ping <!channel> <!here> <@U1>"))
    [post] = fake_slack.posts["C1"]
    assert post["text"] == (
        "alice: look &lt;https://x|here&gt; &amp; ping &lt;!channel&gt; &lt;!here&gt; &lt;@U1&gt;"
    )
    assert "<" not in post["text"] and ">" not in post["text"]
    assert res.native_ids == (post["ts"],)
    assert res.thread is None
    assert "username" not in post  # customize off: attribution is the core's prefix


async def test_escaping_is_idempotent_across_render_and_send(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    rendered = gw.render_text(_msg(), "a <!channel> & b &amp; c", {})
    assert rendered == "a &lt;!channel&gt; &amp; b &amp; c"
    await gw.send(_out(gw, rendered))
    assert fake_slack.posts["C1"][0]["text"] == rendered


async def test_mass_mentions_only_when_binding_allows(make_gateway, fake_slack, sk):
    gw = await make_gateway(mode="events")
    await gw.send(_out(gw, "deploy done @here <!channel>"))
    assert fake_slack.posts["C1"][-1]["text"] == "deploy done @here &lt;!channel&gt;"
    opts = {"allow_mass_mentions": True}
    await gw.send(_out(gw, "deploy done @here <!channel> <@U1> mail@here.com <https://x|y>", options=opts))
    # the route allows it: mentions are live, other markup (links) stays escaped
    assert fake_slack.posts["C1"][-1]["text"] == (
        "deploy done <!here> <!channel> <@U1> mail@here.com &lt;https://x|y&gt;"
    )


async def test_threads_reply_to_binding_thread_and_address_thread(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    parent = (await gw.send(_out(gw, "parent"))).native_ids[0]
    r1 = await gw.send(_out(gw, "reply", reply_to=parent))
    assert fake_slack.posts["C1"][-1]["thread_ts"] == parent and r1.thread == parent
    # a reply to a reply goes into the parent's thread (Slack threads hang off the parent)
    await gw.send(_out(gw, "reply to reply", reply_to=r1.native_ids[0]))
    assert fake_slack.posts["C1"][-1]["thread_ts"] == parent
    await gw.send(_out(gw, "in thread", thread="1700000000.000001"))
    assert fake_slack.posts["C1"][-1]["thread_ts"] == "1700000000.000001"
    await gw.send(_out(gw, "binding thread", options={"thread_ts": "1700000000.000009"}))
    assert fake_slack.posts["C1"][-1]["thread_ts"] == "1700000000.000009"
    await gw.send(_out(gw, "top level"))
    assert "thread_ts" not in fake_slack.posts["C1"][-1]


async def test_customize_sets_username_and_icon(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", customize=True, icon_url="https://example.org/default.png")
    await gw.send(_out(gw, "hello", message=_msg(sender="carol")))
    post = fake_slack.posts["C1"][-1]
    assert post["username"] == "carol" and post["icon_url"] == "https://example.org/default.png"
    await gw.send(_out(gw, "hello", message=_msg(sender="dave"), options={"icon_url": "https://e.org/d.png"}))
    assert fake_slack.posts["C1"][-1]["icon_url"] == "https://e.org/d.png"


async def test_429_on_one_channel_is_retry_after_and_other_channel_flows(make_gateway, fake_slack, sk):
    gw = await make_gateway(mode="events", bindings=[sk.binding("C1"), sk.binding("C2")])
    fake_slack.fail_429["C1"].append(7)
    with pytest.raises(DeliveryError) as ei:
        await gw.send(_out(gw, "one", "C1"))
    assert ei.value.retry_after == 7 and not ei.value.permanent
    await gw.send(_out(gw, "two", "C2"))
    assert [p["text"] for p in fake_slack.posts["C2"]] == ["two"]
    assert fake_slack.posts["C1"] == []
    # scopes: the core pauses only the C1 lane and bucket
    scopes = {rl.scope for rl in gw.rate_limits(Address(gw.name, "C1"))}
    assert scopes == {"slack:slack:channel:C1", "slack:slack:workspace"}


async def test_ratelimited_json_error_becomes_retry_after(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    fake_slack.fail_error["C1"].append("ratelimited")
    with pytest.raises(DeliveryError) as ei:
        await gw.send(_out(gw, "x"))
    assert ei.value.retry_after is not None and not ei.value.permanent


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found", "invalid_auth", "is_archived"])
async def test_permanent_errors_carry_no_token(make_gateway, fake_slack, error, sk):
    gw = await make_gateway(mode="events")
    fake_slack.fail_error["C1"].append(error)
    with pytest.raises(DeliveryError) as ei:
        await gw.send(_out(gw, "x"))
    assert ei.value.permanent and error in str(ei.value)
    assert sk.BOT_TOKEN not in str(ei.value) and "xoxb" not in str(ei.value)
    if error == "invalid_auth":
        assert gw.state == GatewayState.BAD_CREDENTIALS


async def test_edit_and_delete(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    ts = (await gw.send(_out(gw, "v1"))).native_ids[0]
    res = await gw.send(_out(gw, "v2 <!here>", edit_of=ts))
    assert fake_slack.updates[-1]["ts"] == ts and fake_slack.updates[-1]["text"] == "v2 &lt;!here&gt;"
    assert res.native_ids == (ts,)
    deleted = _msg(deleted=True, edit_of="mesh-native")
    await gw.send(_out(gw, "", message=deleted, edit_of=ts))
    assert fake_slack.deletes[-1] == {"channel": "C1", "ts": ts}
    # deleting something already gone is success
    fake_slack.fail_error["C1"].append("message_not_found")
    await gw.send(_out(gw, "", message=deleted, edit_of=ts))


async def test_attachments_become_descriptions(make_gateway, fake_slack):
    from claudemesh_gateway import Attachment

    gw = await make_gateway(mode="events")
    att = Attachment(name="plot.png", content_type="image/png", size=4096, url="https://files.example/p.png")
    await gw.send(_out(gw, "see", attachments=(att,)))
    assert fake_slack.posts["C1"][-1]["text"] == "see\n[image plot.png, 4 KiB] https://files.example/p.png"


async def test_capabilities_and_config_limits(make_gateway):
    gw = await make_gateway(mode="events", max_text=3000)
    caps = gw.capabilities
    assert (caps.max_text, caps.threads, caps.replies, caps.edits, caps.deletes, caps.media) == (
        3000,
        True,
        True,
        True,
        True,
        True,
    )
    assert caps.formatting == "mrkdwn"
    assert caps.max_media_bytes == 50 * 1024 * 1024  # upload_max_bytes
    off = await make_gateway(mode="events", start=False, upload_max_bytes=0)
    assert off.capabilities.media is False  # files are then described in the text


async def test_server_error_and_network_error_are_transient(make_gateway, fake_slack, http_session, sk):
    from aiohttp import web

    gw = await make_gateway(mode="events")

    async def boom(request):
        return web.Response(status=503, text="<html>upstream down</html>")

    fake_slack._m_chat_postMessage = lambda request, p: boom(request)  # type: ignore[method-assign]
    with pytest.raises(DeliveryError) as ei:
        await gw.send(_out(gw, "x"))
    assert not ei.value.permanent and ei.value.retry_after is None

    from claudemesh_gateway.plugins.slack.gateway import SlackGateway
    from claudemesh_gateway.testing import RecordingContext

    dead = SlackGateway(
        "slack",
        SlackGateway.Config.model_validate(
            {
                "bot_token": sk.BOT_TOKEN,
                "mode": "events",
                "signing_secret": "s",
                "api_base": "http://127.0.0.1:9/api/",
            }
        ),
        RecordingContext("slack", http_session),
    )
    await dead.start()  # network down at boot: not fatal, retried in the background
    assert dead.state == GatewayState.TRANSIENT_DISCONNECT
    with pytest.raises(DeliveryError) as ei:
        await dead.send(_out(dead, "x"))
    assert not ei.value.permanent and "127.0.0.1" not in str(ei.value)
    await dead.stop()


async def test_thread_parents_survive_a_restart(make_gateway, fake_slack, http_session, sk):
    gw = await make_gateway(mode="events")
    parent = (await gw.send(_out(gw, "parent"))).native_ids[0]
    reply = (await gw.send(_out(gw, "reply", reply_to=parent))).native_ids[0]
    await gw.stop()
    assert [["C1", reply, parent]] == gw.ctx.kv["thread_parents"]

    from claudemesh_gateway.plugins.slack.gateway import SlackGateway
    from claudemesh_gateway.testing import RecordingContext

    ctx = RecordingContext("slack", http_session, [sk.binding("C1")])
    ctx.kv = dict(gw.ctx.kv)
    again = SlackGateway("slack", gw.config, ctx)
    await again.start()
    try:
        await again.send(_out(again, "reply to the reply", reply_to=reply))
        assert fake_slack.posts["C1"][-1]["thread_ts"] == parent
    finally:
        await again.stop()
