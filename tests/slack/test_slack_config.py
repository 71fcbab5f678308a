"""Config validation and plugin registration."""

from __future__ import annotations

import pytest
from claudemesh_gateway.plugins.slack.config import SlackConfig
from pydantic import ValidationError


def test_defaults():
    cfg = SlackConfig.model_validate({"bot_token": "xoxb-1", "app_token": "xapp-1"})
    assert cfg.mode == "socket" and cfg.api_base == "https://slack.com/api/" and cfg.max_text == 4000
    assert not cfg.customize
    assert (cfg.rate.per_channel_per_s, cfg.rate.per_channel_burst) == (1.0, 3.0)


def test_unknown_keys_rejected_and_secrets_not_echoed():
    with pytest.raises(ValidationError) as ei:
        SlackConfig.model_validate({"bot_token": "xoxb-supersecret", "tokn": "x", "mode": "polling"})
    text = str(ei.value)
    assert "tokn" in text and "mode" in text
    assert "supersecret" not in text
    with pytest.raises(ValidationError):
        SlackConfig.model_validate({"bot_token": "xoxb-1", "rate": {"per_channel_per_s": 0}})


async def test_start_refuses_incomplete_mode_config(make_gateway):
    from claudemesh_gateway import StartupError

    gw = await make_gateway(mode="events", start=False, signing_secret=None)
    with pytest.raises(StartupError, match="signing_secret"):
        await gw.start()
    gw = await make_gateway(mode="socket", start=False, app_token=None)
    with pytest.raises(StartupError, match="app_token"):
        await gw.start()
    gw = await make_gateway(mode="events", start=False, bot_token="xoxp-user-token")
    with pytest.raises(StartupError, match="xoxb"):
        await gw.start()


def test_plugin_registers_the_gateway():
    import claudemesh_gateway.plugins.slack as plugin

    registered = []
    plugin.register_gateways(registered.append)
    assert [g.kind for g in registered] == ["slack"]
    # __init__ holds only the hookimpl (and the import it needs)
    public = {k for k in vars(plugin) if not k.startswith("_")}
    assert (
        public
        - {
            "hookimpl",
            "SlackGateway",
            "register_gateways",
            "api",
            "config",
            "egress",
            "files",
            "gateway",
            "history",
            "ingress",
            "mrkdwn",
            "signature",
            "socketmode",
            "threads",
            "wire",
        }
        == set()
    )


async def test_secrets_registered(make_gateway, sk):
    gw = await make_gateway(mode="socket", start=False, signing_secret=sk.SIGNING_SECRET)
    assert set(gw.ctx.secrets) == {sk.BOT_TOKEN, sk.APP_TOKEN, sk.SIGNING_SECRET}


async def test_check_reports_missing_scopes_from_auth_test(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", start=False)
    assert await gw.check() == []  # the fake grants everything this binding (both ways) needs
    fake_slack.scopes -= {"files:write", "users:read"}
    warnings = await gw.check()
    assert any("lacks the files:write scope" in w and "upload_max_bytes = 0" in w for w in warnings)
    assert any("lacks the users:read scope" in w for w in warnings)
    assert len(warnings) == 2
    fake_slack.scopes -= {"channels:history", "groups:history"}
    assert any("receives no channel messages" in w for w in await gw.check())


async def test_check_customize_needs_its_scope_and_uploads_off_need_no_files_write(make_gateway, fake_slack):
    fake_slack.scopes -= {"files:write"}
    gw = await make_gateway(mode="events", start=False, customize=True, upload_max_bytes=0)
    assert await gw.check() == [("slack: the bot token lacks the chat:write.customize scope: "
                                "customize = true cannot set the sender's name")]


async def test_check_reports_a_refused_token_without_showing_it(make_gateway, fake_slack):
    fake_slack.auth_error = "token_revoked"
    gw = await make_gateway(mode="events", start=False)
    warnings = await gw.check()
    assert warnings == ["slack: Slack refused bot_token (token_revoked)"]
    assert "xoxb" not in " ".join(warnings)
