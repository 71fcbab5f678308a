"""The Slack gateway's config: ``[gateways.<name>]`` and a binding's ``options``."""

from __future__ import annotations

from typing import Any, Literal

from claudemesh_gateway import BindingOptions, GatewayConfig
from pydantic import ConfigDict, Field, SecretStr

__all__ = ["RateConfig", "SlackBindingOptions", "SlackConfig", "binding_options"]


class RateConfig(GatewayConfig):
    """chat.postMessage "special" tier: ~1 message/s per channel with short bursts, plus a
    workspace-wide limit (several hundred per minute)."""

    per_channel_per_s: float = Field(1.0, gt=0)
    per_channel_burst: float = Field(3.0, ge=1)
    workspace_per_s: float = Field(4.0, gt=0)
    workspace_burst: float = Field(20.0, ge=1)


class SlackConfig(GatewayConfig):
    """``[gateways.<name>]`` with ``type = "slack"``. One table per workspace/app."""

    model_config = ConfigDict(hide_input_in_errors=True)  # never echo tokens in config errors

    bot_token: SecretStr  # xoxb-...
    app_token: SecretStr | None = None  # xapp-... (mode = "socket"; scope connections:write)
    signing_secret: SecretStr | None = None  # mode = "events" (and slash commands)
    mode: Literal["socket", "events"] = "socket"
    api_base: str = "https://slack.com/api/"
    customize: bool = False  # per-message username/icon_url (scope chat:write.customize)
    icon_url: str | None = None  # default avatar when customize = true
    max_text: int = Field(4000, ge=200, le=40000)
    ignore_bots: bool = True  # drop messages posted by any bot/app (our own are always dropped)
    unfurl: bool = False  # let Slack unfurl links in relayed messages
    lookup_timeout: float = Field(1.0, gt=0, le=2.5)  # name lookups per inbound event, seconds
    name_cache_ttl: float = Field(3600.0, ge=0)
    request_timeout: int = Field(10, ge=1, le=60)
    ping_interval: float = Field(5.0, gt=0)  # Socket Mode keep-alive
    # catch-up after downtime from conversations.history (opt-in: Slack's limits for new
    # non-Marketplace apps are ~1 request/min with <= 15 messages)
    history_catchup: bool = False
    history_rate_per_min: float = Field(1.0, gt=0)  # conversations.history calls, all channels together
    history_page_limit: int = Field(15, ge=1, le=200)  # messages per call
    history_max_age: float = Field(86400.0, gt=0)  # seconds: never fetch older messages
    # files: largest file uploaded to Slack (files_upload_v2, scope files:write); 0 = never upload,
    # files are described in the text. Slack itself takes up to 1 GB.
    upload_max_bytes: int = Field(50 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)
    # the text goes with the upload as its initial_comment when at most this long (and
    # customize = false); otherwise it is posted as its own message first, then the files
    upload_comment_max: int = Field(4000, ge=0, le=40000)
    rate: RateConfig = RateConfig()


class SlackBindingOptions(BindingOptions):
    """``options = {...}`` on a route binding to a Slack channel."""

    thread_ts: str | None = None  # post all mesh traffic into this thread of the channel
    allow_users: tuple[str, ...] = ()  # Slack user ids relayed from this channel (empty: all)
    icon_url: str | None = None  # avatar for this binding (customize = true)
    allow_mass_mentions: bool = False  # let "@here"/"@channel"/"@everyone" from the mesh ping


def binding_options(raw: Any) -> SlackBindingOptions:
    """``raw`` (a binding's or an Outbound's options) as SlackBindingOptions; unknown keys are dropped
    and options that do not validate are the defaults."""
    if isinstance(raw, SlackBindingOptions):
        return raw
    if not raw:
        return SlackBindingOptions()
    data = raw.model_dump() if hasattr(raw, "model_dump") else dict(raw)
    known = {k: v for k, v in data.items() if k in SlackBindingOptions.model_fields}
    try:
        return SlackBindingOptions.model_validate(known)
    except ValueError:
        return SlackBindingOptions()
