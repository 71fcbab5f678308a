"""``[gateways.<name>]`` (``type = "telegram"``) and per-binding options."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from claudemesh_gateway import BindingOptions, GatewayConfig
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = ["RateConfig", "TelegramBindingOptions", "TelegramConfig", "bound_thread", "coerce_options", "effective", "is_html"]

MB = 1024 * 1024
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")


class RateConfig(BaseModel):
    """Token buckets the core applies before each send (Telegram bots FAQ numbers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_chat_per_s: float = Field(1.0, gt=0)
    per_chat_burst: float = Field(3.0, ge=1)
    per_group_per_min: float = Field(20.0, gt=0)
    per_group_burst: float = Field(20.0, ge=1)
    global_per_s: float = Field(30.0, gt=0)
    global_burst: float = Field(30.0, ge=1)


class TelegramConfig(GatewayConfig):
    """One bot. Several bots = several ``[gateways.<name>]`` tables, each with its own token."""

    # hide_input_in_errors: a validation error must never print the token.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    token: SecretStr
    mode: Literal["polling", "webhook"] = "polling"
    webhook_secret: SecretStr | None = None
    public_url: str | None = None
    api_base: str = "https://api.telegram.org"
    parse_mode: Literal["HTML", "plain"] = "HTML"
    markdown: bool = True  # HTML mode: render code fences, `code`, **bold**, [label](https://url)
    link_preview: bool = False
    poll_timeout: int = Field(25, ge=0, le=50)
    drop_pending_updates: bool = False
    max_connections: int = Field(40, ge=1, le=100)
    delete_webhook_on_stop: bool = True
    rate: RateConfig = RateConfig()
    download_max_bytes: int = Field(20 * MB, ge=0)
    upload_max_bytes: int = Field(50 * MB, ge=0)
    reply_unauthorised: str | None = Field(None, max_length=500)
    ignore_bots: bool = False
    set_commands: bool = True  # register /topics /peers /status /dm /help in Telegram's command menu

    @field_validator("token")
    @classmethod
    def _token_shape(cls, v: SecretStr) -> SecretStr:
        if not _TOKEN.match(v.get_secret_value()):
            raise ValueError("token: not a BotFather token (expected <digits>:<letters>)")
        return v

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _SECRET.match(v.get_secret_value()):
            raise ValueError("webhook_secret: 1-256 characters of A-Z a-z 0-9 _ - (Telegram's rule)")
        return v

    @field_validator("api_base", "public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError("must be an http(s):// URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _webhook_needs(self) -> TelegramConfig:
        # public_url may come from [server] public_url instead (checked when the gateway starts)
        if self.mode == "webhook" and self.webhook_secret is None:
            raise ValueError('mode = "webhook" needs webhook_secret')
        return self


class TelegramBindingOptions(BindingOptions):
    """``options = {...}`` on a route's Telegram binding."""

    message_thread_id: int | None = None  # forum topic (same as chat = "<id>", thread = "<topic>")
    allow_users: tuple[str, ...] = ()  # numeric user ids or @usernames; empty = everyone
    disable_notification: bool = False
    protect_content: bool = False
    link_preview: bool | None = None  # None: the gateway's link_preview
    parse_mode: Literal["HTML", "plain"] | None = None  # None: the gateway's parse_mode
    markdown: bool | None = None  # None: the gateway's markdown
    mentions: Literal["allow", "neutralise"] = "allow"
    ignore_bots: bool | None = None  # None: the gateway's ignore_bots


_DEFAULT = TelegramBindingOptions()


def coerce_options(value: Any) -> TelegramBindingOptions:
    """Binding options as handed over by the core: a model, a mapping, or nothing."""
    if isinstance(value, TelegramBindingOptions):
        return value
    if value is None:
        return _DEFAULT
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        if not value:
            return _DEFAULT
        try:
            return TelegramBindingOptions.model_validate(dict(value))
        except ValidationError:
            known = {k: v for k, v in value.items() if k in TelegramBindingOptions.model_fields}
            try:
                return TelegramBindingOptions.model_validate(known)
            except ValidationError:
                return _DEFAULT
    return _DEFAULT


def effective(config: TelegramConfig, opts: TelegramBindingOptions, setting: str) -> Any:
    """A setting a binding may override (``link_preview``, ``parse_mode``, ``markdown``, ``ignore_bots``):
    the binding's value, else the gateway's."""
    value = getattr(opts, setting)
    return getattr(config, setting) if value is None else value


def is_html(config: TelegramConfig, opts: TelegramBindingOptions) -> bool:
    """Whether text to this binding is sent with ``parse_mode=HTML``."""
    return effective(config, opts, "parse_mode") == "HTML"


def bound_thread(thread: str | None, opts: TelegramBindingOptions) -> str | None:
    """The forum topic a binding names: its address's thread, else its ``message_thread_id``."""
    return thread or (str(opts.message_thread_id) if opts.message_thread_id else None)
