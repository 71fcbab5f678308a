"""check() warnings, plugin registration, and the core's GatewayContract (polling and webhook)."""

from __future__ import annotations

import pytest
from aiohttp import web
from claudemesh_gateway import Address, Message, Outbound
from claudemesh_gateway.testing import GatewayContract

SECRET = "s3cret_webhook-Token"


def test_plugin_registers_the_gateway():
    from claudemesh_gateway.plugins import telegram as plugin
    seen = []
    plugin.register_gateways(seen.append)
    assert [c.kind for c in seen] == ["telegram"]
    caps = seen[0].capabilities
    assert (caps.max_text, caps.threads, caps.replies, caps.edits, caps.media, caps.formatting) == (
        4096, True, True, True, True, "html")


async def test_check_warns_about_privacy_mode_unknown_chats_and_stale_webhook(make_gateway, fake_tg, tg_binding):
    fake_tg.bot_user["can_read_all_group_messages"] = False
    fake_tg.unknown_chats.add("-100999")
    fake_tg.webhook = {"url": "https://old.example/hook"}
    gw, _ = make_gateway(bindings=[tg_binding(-100123), tg_binding(-100999), tg_binding(42, 7)])
    warnings = await gw.check()
    text = "\n".join(warnings)
    assert "privacy mode is on" in text and "/setprivacy" in text
    assert "chat -100999 not found" in text
    assert "webhook is set" in text
    assert "chat 42 has topics bound but is not a forum" in text


async def test_check_is_quiet_when_all_is_well(make_gateway, fake_tg, tg_binding):
    fake_tg.forum_chats.add("-100123")
    gw, _ = make_gateway(bindings=[tg_binding(-100123, 5), tg_binding(42)])
    assert await gw.check() == []


async def test_check_reports_a_rejected_token(make_gateway):
    gw, _ = make_gateway(token="1:bad")
    [w] = await gw.check()
    assert "rejected" in w and "1:bad" not in w


class _Common:
    @pytest.fixture
    def contract_outbound(self):
        msg = Message(id="mesh:x:1", origin=Address("mesh", "x:#t"), sender="alice", text="hello")
        return Outbound(message=msg, to=Address("tg", "-100777"), text="alice: hello")

    @pytest.fixture
    def contract_break_vendor(self, fake_tg):
        def brk(permanent: bool) -> None:
            if permanent:
                fake_tg.unknown_chats.add("-100777")
            else:
                fake_tg.fail_next("sendMessage", 500, "Internal Server Error", times=100)
        return brk


class TestTelegramPollingContract(_Common, GatewayContract):
    @pytest.fixture
    def contract_gateway(self, make_gateway, tg_binding):
        gw, _ = make_gateway(bindings=[tg_binding(-100777)])
        return gw

    @pytest.fixture
    def contract_inbound(self, fake_tg):
        ids: dict[str, dict] = {}

        async def deliver(gateway, update_id: str, *, signed: bool = True):
            if update_id not in ids:
                ids[update_id] = fake_tg.make_update(fake_tg.make_message(-100777, f"contract {update_id}"))
            fake_tg.push(dict(ids[update_id]))
            # polling: no signed ingress
        return deliver


class TestTelegramWebhookContract(_Common, GatewayContract):
    @pytest.fixture
    def contract_gateway(self, make_gateway, tg_binding):
        gw, _ = make_gateway(bindings=[tg_binding(-100777)], mode="webhook", webhook_secret=SECRET,
                             public_url="https://gw.example.org")
        return gw

    @pytest.fixture
    def contract_inbound(self, fake_tg, aiohttp_client):
        ids: dict[str, dict] = {}
        clients: dict[int, object] = {}

        async def deliver(gateway, update_id: str, *, signed: bool = True):
            if id(gateway) not in clients:
                app, sub = web.Application(), web.Application()
                sub.add_routes(gateway.web_routes())
                app.add_subapp(f"/gateways/{gateway.name}/", sub)
                clients[id(gateway)] = await aiohttp_client(app)
            client = clients[id(gateway)]
            if update_id not in ids:
                ids[update_id] = fake_tg.make_update(fake_tg.make_message(-100777, f"contract {update_id}"))
            headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET if signed else "forged"}
            resp = await client.post(f"/gateways/{gateway.name}/webhook", json=ids[update_id], headers=headers)
            return resp.status
        return deliver


async def test_two_bots_are_two_independent_instances(make_gateway, fake_tg, tg_fake_module, aiohttp_server,
                                                     tg_binding):
    other = tg_fake_module.FakeBotAPI("777:OTHER-bot-token_zyxwvutsrqponmlkjihgfedcba")
    server = await aiohttp_server(other.app)
    other.url = str(server.make_url("")).rstrip("/")
    a, actx = make_gateway(name="tg", bindings=[tg_binding(1, gateway="tg")])
    b, bctx = make_gateway(name="tg_ops", token=other.token, api_base=other.url,
                           bindings=[tg_binding(1, gateway="tg_ops")])
    fake_tg.add_message(1, "to bot A")
    other.add_message(1, "to bot B")
    await a.start()
    await b.start()
    [ma] = await actx.wait_for(1)
    [mb] = await bctx.wait_for(1)
    assert ma.id.startswith("telegram:tg:1:") and mb.id.startswith("telegram:tg_ops:1:")
    assert ma.origin.gateway == "tg" and mb.origin.gateway == "tg_ops"
    assert {r.scope for r in a.rate_limits(ma.origin)}.isdisjoint({r.scope for r in b.rate_limits(mb.origin)})
    msg = Message(id="m", origin=Address("mesh", "m:#t"), sender="x", text="hi")
    await b.send(Outbound(message=msg, to=Address("tg_ops", "1"), text="hi"))
    assert other.texts(1) == ["hi"] and fake_tg.texts(1) == []


def test_the_documented_config_validates():
    import re
    import tomllib
    from pathlib import Path

    from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway

    doc = (Path(__file__).resolve().parents[2] / "docs" / "telegram.md").read_text()
    data = tomllib.loads(re.search(r"```toml\n(.*?)\n```", doc, re.DOTALL).group(1))
    table = dict(data["gateways"]["telegram"])
    assert table.pop("type") == "telegram"
    table["token"] = "123:CHANGE_ME"
    cfg = TelegramGateway.Config.model_validate(table)
    assert cfg.rate.per_chat_per_s == 1 and cfg.mode == "polling"
    binds = [b for r in data["routes"] for b in r["binds"]]
    assert binds and all(b["gateway"] == "telegram" for b in binds)
    for b in binds:
        TelegramGateway.BindingOptions.model_validate(b.get("options", {}))
    # every documented option of the gateway table exists in the model (and the reverse)
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc.split("### Options reference")[1].split("Binding fields")[0], re.MULTILINE))
    assert documented == set(TelegramGateway.Config.model_fields) - {"rate"}
    options_doc = doc.split("Binding fields")[1].split("## 3.")[0]
    assert set(re.findall(r"^\| `([a-z_]+)` \|", options_doc, re.MULTILINE)) == set(TelegramGateway.BindingOptions.model_fields)
