"""Webhook ingress: secret token first, 200 only after submit, setWebhook/deleteWebhook lifecycle."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

SECRET = "s3cret_webhook-Token"
HEADER = "X-Telegram-Bot-Api-Secret-Token"


@pytest.fixture
async def webhook_gw(make_gateway, tg_binding, aiohttp_client):
    gw, ctx = make_gateway(bindings=[tg_binding(-100600)], mode="webhook", webhook_secret=SECRET,
                           public_url="https://gw.example.org/")
    app = web.Application()
    sub = web.Application()
    sub.add_routes(gw.web_routes())
    app.add_subapp("/gateways/tg/", sub)
    client = await aiohttp_client(app)
    return gw, ctx, client


async def test_start_registers_webhook_and_stop_deletes_it(webhook_gw, fake_tg):
    gw, _ctx, _ = webhook_gw
    await gw.start()
    await gw.wait_ready(5)
    [p] = fake_tg.method_calls("setWebhook")
    assert p["url"] == "https://gw.example.org/gateways/tg/webhook"
    assert p["secret_token"] == SECRET
    assert p["allowed_updates"] == ["message", "edited_message", "channel_post", "edited_channel_post"]
    assert fake_tg.method_calls("getUpdates") == []
    await gw.stop()
    assert fake_tg.method_calls("deleteWebhook") and fake_tg.webhook["url"] == ""
    await gw.stop()  # idempotent
    assert len(fake_tg.method_calls("deleteWebhook")) == 1


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({HEADER: "wrong"}, 403),
    ({HEADER: SECRET + "x"}, 403),
    ({HEADER: ""}, 403),
])
async def test_forged_webhook_rejected_nothing_submitted(webhook_gw, fake_tg, headers, status):
    gw, ctx, client = webhook_gw
    await gw.start()
    upd = fake_tg.make_update(fake_tg.make_message(-100600, "forged"))
    resp = await client.post("/gateways/tg/webhook", json=upd, headers=headers)
    assert resp.status == status
    # a forged body is not even parsed: garbage gets the same answer
    resp = await client.post("/gateways/tg/webhook", data=b"{not json", headers=headers)
    assert resp.status == status
    assert ctx.attempts == []


async def test_valid_webhook_submits_before_answering(webhook_gw, fake_tg):
    gw, ctx, client = webhook_gw
    await gw.start()
    upd = fake_tg.make_update(fake_tg.make_message(-100600, "real", reply_to=3))
    resp = await client.post("/gateways/tg/webhook", json=upd, headers={HEADER: SECRET})
    assert resp.status == 200
    [m] = ctx.submitted  # already there when the 200 arrived
    assert m.text == "real" and m.reply_to == "3" and m.origin.chat == "-100600"
    # Telegram redelivers the same update: same id, the ledger drops it
    resp = await client.post("/gateways/tg/webhook", json=upd, headers={HEADER: SECRET})
    assert resp.status == 200 and len(ctx.submitted) == 1 and ctx.attempts == [m.id, m.id]


async def test_webhook_submit_failure_asks_telegram_to_retry(webhook_gw, fake_tg):
    gw, ctx, client = webhook_gw
    await gw.start()
    ctx.fail_submit = RuntimeError("store down")
    upd = fake_tg.make_update(fake_tg.make_message(-100600, "later"))
    resp = await client.post("/gateways/tg/webhook", json=upd, headers={HEADER: SECRET})
    assert resp.status == 503 and ctx.submitted == []
    ctx.fail_submit = None
    resp = await client.post("/gateways/tg/webhook", json=upd, headers={HEADER: SECRET})
    assert resp.status == 200 and len(ctx.submitted) == 1


async def test_webhook_bad_json_with_good_secret_is_400_and_unknown_update_is_acked(webhook_gw):
    gw, ctx, client = webhook_gw
    await gw.start()
    resp = await client.post("/gateways/tg/webhook", data=b"{not json", headers={HEADER: SECRET})
    assert resp.status == 400
    resp = await client.post("/gateways/tg/webhook", data=json.dumps({"update_id": 5, "poll": {"id": "1"}}),
                             headers={HEADER: SECRET, "Content-Type": "application/json"})
    assert resp.status == 200 and ctx.attempts == []


async def test_webhook_mode_needs_secret_and_public_url(make_gateway, fake_tg):
    from claudemesh_gateway import ConfigError
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        make_gateway(mode="webhook", public_url="https://x.example")
    with pytest.raises(ValidationError):
        make_gateway(mode="webhook", webhook_secret="has space", public_url="https://x.example")
    gw, _ = make_gateway(mode="webhook", webhook_secret=SECRET)  # [server] public_url may supply it
    with pytest.raises(ConfigError, match=r"public_url in \[gateways.tg\] or \[server\] public_url"):
        await gw.start()
    assert fake_tg.method_calls("setWebhook") == []
    assert any("without public_url" in w for w in await gw.check())


async def test_webhook_falls_back_to_server_public_url(make_gateway, fake_tg, http):
    from claudemesh_gateway.testing import RecordingContext
    ctx = RecordingContext("tg", http, public_url="https://server.example.org/prefix")
    gw, _ = make_gateway(ctx=ctx, mode="webhook", webhook_secret=SECRET)
    await gw.start()
    await gw.wait_ready(5)
    [p] = fake_tg.method_calls("setWebhook")
    assert p["url"] == "https://server.example.org/prefix/gateways/tg/webhook"
    await gw.stop()
    ctx2 = RecordingContext("tg2", http, public_url="https://server.example.org")
    own, _ = make_gateway(name="tg2", ctx=ctx2, mode="webhook", webhook_secret=SECRET,
                          public_url="https://own.example.org")
    assert own.webhook_url == "https://own.example.org/gateways/tg2/webhook"  # the gateway's own wins


async def test_webhook_after_stop_answers_503_so_telegram_retries(webhook_gw, fake_tg):
    gw, ctx, client = webhook_gw
    await gw.start()
    await gw.stop()
    upd = fake_tg.make_update(fake_tg.make_message(-100600, "late"))
    resp = await client.post("/gateways/tg/webhook", json=upd, headers={HEADER: SECRET})
    assert resp.status == 503 and ctx.attempts == []
