"""pydantic models for the Bot API payloads this gateway reads (updates, getMe, getFile, webhook info).

Tolerant by design: unknown fields are ignored (Telegram adds fields often) and
every field we don't strictly need is optional, so a new update shape never
crashes ingress. Only what the gateway uses is modelled.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Chat",
    "FileObject",
    "MessageEntity",
    "PhotoSize",
    "Sticker",
    "TgFile",
    "TgMessage",
    "Update",
    "User",
    "WebhookInfo",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class _Named(_Model):
    """What users and chats share: an id and the names shown for them."""

    id: int
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None

    @property
    def display_name(self) -> str:
        name = " ".join(p for p in (self.first_name, self.last_name) if p).strip()
        return name or (f"@{self.username}" if self.username else str(self.id))


class User(_Named):
    is_bot: bool = False
    first_name: str = ""
    # getMe only
    can_join_groups: bool | None = None
    can_read_all_group_messages: bool | None = None


class Chat(_Named):
    type: str = "private"  # private | group | supergroup | channel
    title: str | None = None
    is_forum: bool | None = None

    @property
    def display_name(self) -> str:
        return self.title or super().display_name

    @property
    def is_group(self) -> bool:
        return self.type in ("group", "supergroup", "channel")


class PhotoSize(_Model):
    file_id: str
    file_unique_id: str = ""
    width: int = 0
    height: int = 0
    file_size: int | None = None


class FileObject(_Model):
    """Document, Audio, Video, Voice, Animation, VideoNote: the fields they share."""

    file_id: str
    file_unique_id: str = ""
    file_size: int | None = None
    file_name: str | None = None
    mime_type: str | None = None
    title: str | None = None  # audio
    performer: str | None = None  # audio


class Sticker(_Model):
    file_id: str
    file_unique_id: str = ""
    file_size: int | None = None
    emoji: str | None = None
    is_animated: bool = False
    is_video: bool = False


class MessageEntity(_Model):
    type: str
    offset: int
    length: int
    url: str | None = None  # text_link


class TgMessage(_Model):
    message_id: int
    message_thread_id: int | None = None
    from_: User | None = Field(default=None, alias="from")
    sender_chat: Chat | None = None
    author_signature: str | None = None
    chat: Chat
    date: int = 0
    edit_date: int | None = None
    is_topic_message: bool | None = None
    reply_to_message: TgMessage | None = None
    text: str | None = None
    caption: str | None = None
    entities: list[MessageEntity] = []
    caption_entities: list[MessageEntity] = []
    photo: list[PhotoSize] = []
    document: FileObject | None = None
    audio: FileObject | None = None
    video: FileObject | None = None
    voice: FileObject | None = None
    animation: FileObject | None = None
    video_note: FileObject | None = None
    sticker: Sticker | None = None
    migrate_to_chat_id: int | None = None
    via_bot: User | None = None


class Update(_Model):
    update_id: int
    message: TgMessage | None = None
    edited_message: TgMessage | None = None
    channel_post: TgMessage | None = None
    edited_channel_post: TgMessage | None = None

    def content(self) -> tuple[TgMessage | None, bool]:
        """(the message this update carries, whether it is an edit)."""
        if self.message is not None:
            return self.message, False
        if self.channel_post is not None:
            return self.channel_post, False
        if self.edited_message is not None:
            return self.edited_message, True
        if self.edited_channel_post is not None:
            return self.edited_channel_post, True
        return None, False


class WebhookInfo(_Model):
    url: str = ""
    pending_update_count: int = 0
    last_error_date: int | None = None
    last_error_message: str | None = None
    allowed_updates: list[str] | None = None


class TgFile(_Model):
    file_id: str
    file_unique_id: str = ""
    file_size: int | None = None
    file_path: str | None = None


# The update kinds the gateway asks Telegram for (setWebhook / getUpdates allowed_updates).
ALLOWED_UPDATES = ("message", "edited_message", "channel_post", "edited_channel_post")
