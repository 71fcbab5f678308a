"""pydantic models of the Slack payloads this gateway reads (Events API / Socket Mode).

Tolerant: unknown fields are ignored, everything not needed is optional.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Authorization",
    "Edited",
    "EventCallback",
    "MessageEvent",
    "SlackFile",
    "SlashCommand",
    "UserProfile",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SlackFile(_Wire):
    id: str = ""
    name: str | None = None
    title: str | None = None
    mimetype: str | None = None
    size: int | None = None
    url_private: str | None = None  # fetching needs "Authorization: Bearer <bot token>"
    url_private_download: str | None = None  # likewise; the raw bytes, not a viewer page
    permalink: str | None = None
    mode: str | None = None  # "hosted", "external", "snippet", "tombstone" (deleted), "hidden_by_limit"
    is_external: bool = False  # a Google Drive/Dropbox link: no bytes on Slack


class Edited(_Wire):
    user: str | None = None
    ts: str = ""


class UserProfile(_Wire):
    display_name: str = ""
    real_name: str = ""
    name: str = ""


class MessageEvent(_Wire):
    """A ``message`` event (and the ``message``/``previous_message`` inside
    ``message_changed`` / ``message_deleted``)."""

    type: str = "message"
    subtype: str | None = None
    channel: str = ""
    channel_type: str | None = None
    team: str | None = None
    user: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    username: str | None = None
    text: str = ""
    ts: str = ""
    event_ts: str | None = None
    thread_ts: str | None = None
    edited: Edited | None = None
    files: list[SlackFile] = []
    user_profile: UserProfile | None = None
    hidden: bool = False
    deleted_ts: str | None = None
    message: MessageEvent | None = None
    previous_message: MessageEvent | None = None

    @property
    def is_thread_reply(self) -> bool:
        return bool(self.thread_ts) and self.thread_ts != self.ts


class Authorization(_Wire):
    team_id: str | None = None
    user_id: str | None = None
    is_bot: bool = False


class EventCallback(_Wire):
    type: str
    team_id: str = ""
    api_app_id: str = ""
    event_id: str = ""
    event_time: int = 0
    event: dict[str, Any] = {}
    authorizations: list[Authorization] = []


class SlashCommand(_Wire):
    command: str = ""
    text: str = ""
    team_id: str = ""
    channel_id: str = ""
    user_id: str = ""
    user_name: str = ""
    trigger_id: str = ""
