"""pydantic models of what Twilio POSTs to us: the inbound message webhook and status callbacks.

Field names are Twilio's (``MessageSid``, ``From``...). Unknown fields are kept
(Twilio adds fields over time) but never trusted for anything but ``raw``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["InboundForm", "Media", "StatusForm", "form_to_dict"]


@dataclasses.dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str


def form_to_dict(form: Mapping[str, Any]) -> dict[str, str]:
    """A (multi)dict of form fields -> plain dict (last value wins; Twilio sends each key once)."""
    return {str(k): str(v) for k, v in form.items()}


class _TwilioForm(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v


class _MessageForm(_TwilioForm):
    """The fields every webhook about one message carries."""

    message_sid: str = Field(alias="MessageSid", min_length=2, max_length=64)
    account_sid: str = Field("", alias="AccountSid")
    to: str = Field("", alias="To")


class InboundForm(_MessageForm):
    """``POST /gateways/<name>/inbound``: a user wrote to our WhatsApp sender."""

    from_: str = Field(alias="From", min_length=1)
    body: str = Field("", alias="Body")
    num_media: int = Field(0, alias="NumMedia", ge=0, le=10)
    profile_name: str = Field("", alias="ProfileName")
    wa_id: str = Field("", alias="WaId")
    replied_sid: str = Field("", alias="OriginalRepliedMessageSid")
    button_text: str = Field("", alias="ButtonText")
    latitude: str = Field("", alias="Latitude")
    longitude: str = Field("", alias="Longitude")
    address: str = Field("", alias="Address")
    label: str = Field("", alias="Label")

    @field_validator("message_sid")
    @classmethod
    def _sid(cls, v: str) -> str:
        if not v.isalnum():
            raise ValueError("MessageSid must be alphanumeric")
        return v

    @property
    def text(self) -> str:
        """The message text: ``Body``, a quick-reply button's text, or a shared location."""
        if self.body:
            return self.body
        if self.button_text:
            return self.button_text
        if self.latitude and self.longitude:
            where = " ".join(p for p in (self.label, self.address) if p)
            return f"📍 {self.latitude},{self.longitude}" + (f" {where}" if where else "")
        return ""

    def media(self) -> list[Media]:
        """``MediaUrl<n>`` / ``MediaContentType<n>`` for n < NumMedia."""
        extra = self.model_extra or {}
        out: list[Media] = []
        for n in range(self.num_media):
            url = extra.get(f"MediaUrl{n}")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                continue
            ctype = extra.get(f"MediaContentType{n}")
            out.append(Media(url=url, content_type=ctype if isinstance(ctype, str) and ctype else
                             "application/octet-stream"))
        return out


class StatusForm(_MessageForm):
    """``POST /gateways/<name>/status``: Twilio's status callback for a message we sent."""

    message_status: str = Field(alias="MessageStatus", min_length=1)
    from_: str = Field("", alias="From")
    error_code: str = Field("", alias="ErrorCode")
    error_message: str = Field("", alias="ErrorMessage")

    @field_validator("message_status")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @property
    def failed(self) -> bool:
        return self.message_status in ("failed", "undelivered")
