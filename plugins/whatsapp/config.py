"""The WhatsApp gateway's configuration: its ``[gateways.<name>]`` table and a binding's ``options``."""

from __future__ import annotations

from typing import Any, Literal

from claudemesh_gateway import BindingOptions, GatewayConfig
from claudemesh_gateway.plugins.whatsapp.text import check_template_variable, normalise_number
from pydantic import Field, SecretStr, field_validator, model_validator

__all__ = ["MB", "WhatsAppBindingOptions", "WhatsAppConfig", "binding_options"]

MB = 1024 * 1024


class WhatsAppConfig(GatewayConfig):
    """``[gateways.<name>]`` with ``type = "whatsapp"``. One instance per Twilio sender/account."""

    account_sid: str = Field(pattern=r"^AC[0-9A-Za-z]{8,64}$")
    auth_token: SecretStr  # signs webhooks; authenticates the REST API unless an API key is given
    api_key_sid: str | None = Field(None, pattern=r"^SK[0-9A-Za-z]{8,64}$")
    api_key_secret: SecretStr | None = None
    webhook_shared_key: SecretStr | None = None  # only if a Twilio Webhook Rule re-signs our webhooks
    from_number: str | None = None  # whatsapp:+E164 of the WhatsApp sender
    messaging_service_sid: str | None = Field(None, pattern=r"^MG[0-9A-Za-z]{8,64}$")
    public_url: str | None = None  # the base URL Twilio calls (scheme://host[:port][/prefix])
    mps: float = Field(80.0, gt=0, le=1000)
    sandbox: bool = False  # Twilio Sandbox: forces 1 message / 3 s
    session_window_h: float = Field(24.0, gt=0, le=24 * 7)
    # Meta's messaging limit: business-initiated messages (templates, outside the window) to
    # at most this many unique users per rolling 24 h (250 -> 2,000 -> 10,000 -> 100,000); 0 = no cap
    daily_unique_users: int = Field(250, ge=0)
    status_callback: bool = True
    request_timeout: float = Field(15.0, gt=0, le=120)
    # WhatsApp media limits (Twilio): 16 MB per message, images 5 MB; larger files are described (0 = no files)
    max_media_bytes: int = Field(16 * MB, ge=0)
    max_image_bytes: int = Field(5 * MB, ge=0)
    # bytes (a file from Telegram, Slack...) are served to Twilio from the store for media_ttl seconds,
    # at most media_cache_bytes in all (oldest out first; 0 = never: such files are described)
    media_ttl: float = Field(900.0, gt=0, le=7 * 86400)
    media_cache_bytes: int = Field(64 * MB, ge=0)

    @field_validator("from_number")
    @classmethod
    def _from(cls, v: str | None) -> str | None:
        return None if v is None else normalise_number(v)

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for local testing)")
        if "?" in v or "#" in v:
            raise ValueError("must not contain a query or fragment")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _sender(self) -> WhatsAppConfig:
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("set from_number (whatsapp:+E164) or messaging_service_sid (MG...)")
        if (self.api_key_sid is None) != (self.api_key_secret is None):
            raise ValueError("api_key_sid and api_key_secret go together")
        return self


class WhatsAppBindingOptions(BindingOptions):
    """``options = {...}`` on a ``[[routes]]`` binding to a WhatsApp chat (a user's number)."""

    outside_window: Literal["template", "hold"] = "hold"
    template_content_sid: str | None = Field(None, pattern=r"^HX[0-9A-Za-z]{8,64}$")
    template_variables: dict[str, str] = Field(default_factory=dict)  # {"1": "{sender}", "2": "{text}"}
    notify_status: bool = False  # failed deliveries / consent changes -> a notice toward the mesh
    allow_numbers: tuple[str, ...] = ()  # extra guard: only these numbers (whatsapp:+E164) in or out

    @field_validator("allow_numbers")
    @classmethod
    def _numbers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalise_number(n) for n in v)

    @field_validator("template_variables")
    @classmethod
    def _variables(cls, v: dict[str, str]) -> dict[str, str]:
        for key, template in v.items():
            try:
                check_template_variable(template)
            except ValueError as exc:
                raise ValueError(f"template_variables.{key}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _template(self) -> WhatsAppBindingOptions:
        if self.outside_window == "template" and not self.template_content_sid:
            raise ValueError('outside_window = "template" needs template_content_sid (HX...)')
        return self


def binding_options(options: Any) -> WhatsAppBindingOptions:
    """A binding's (or an outbound's) ``options`` as :class:`WhatsAppBindingOptions`."""
    if isinstance(options, WhatsAppBindingOptions):
        return options
    if options is None:
        return WhatsAppBindingOptions()
    if hasattr(options, "model_dump"):
        options = options.model_dump()
    return WhatsAppBindingOptions.model_validate(dict(options))
