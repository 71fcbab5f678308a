"""One Telegram update -> a core Message: which bindings cover its chat and forum topic, who may
write, the sender, bot commands, and its files as references."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from claudemesh_gateway import Address, Attachment, Binding, Message
from claudemesh_gateway.plugins.telegram.config import (
    TelegramBindingOptions,
    TelegramConfig,
    bound_thread,
    coerce_options,
    effective,
)
from claudemesh_gateway.plugins.telegram.files import file_ref
from claudemesh_gateway.plugins.telegram.format import entities_to_text
from claudemesh_gateway.plugins.telegram.wire import Chat, FileObject, TgMessage, Update, User

__all__ = [
    "FILE_KINDS",
    "attachments",
    "chat_matches",
    "command",
    "inbound_bindings",
    "sender",
    "sender_allowed",
    "thread_of",
    "to_message",
]

# (attribute of a message, file name and content type when Telegram gives none)
FILE_KINDS: tuple[tuple[str, str, str], ...] = (
    ("document", "document", "application/octet-stream"),
    ("video", "video.mp4", "video/mp4"),
    ("animation", "animation.mp4", "video/mp4"),
    ("audio", "audio.mp3", "audio/mpeg"),
    ("voice", "voice.ogg", "audio/ogg"),
    ("video_note", "video_note.mp4", "video/mp4"),
)


def thread_of(msg: TgMessage) -> str | None:
    # message_thread_id is a forum topic only when is_topic_message; in ordinary
    # supergroups it names a reply chain, which is not a thread we map.
    if msg.is_topic_message and msg.message_thread_id is not None:
        return str(msg.message_thread_id)
    return None


def chat_matches(bound: str, chat: Chat) -> bool:
    """Whether a binding's chat (an id or ``@username``) is ``chat``."""
    if bound == str(chat.id):
        return True
    return bool(bound.startswith("@") and chat.username and bound[1:].lower() == chat.username.lower())


def inbound_bindings(gateway: str, bindings: Sequence[Binding], chat: Chat, thread: str | None) -> list[Binding]:
    """Inbound bindings of ``gateway`` that cover this chat (and forum topic), most specific first."""
    found: list[tuple[int, Binding]] = []
    for b in bindings:
        if not b.inbound or b.address.gateway != gateway:
            continue
        if not chat_matches(b.address.chat, chat):
            continue
        bthread = bound_thread(b.address.thread, coerce_options(b.options))
        if bthread is not None and bthread != thread:
            continue
        found.append((0 if bthread is not None else 1, b))
    found.sort(key=lambda t: t[0])
    return [b for _, b in found]


def sender(msg: TgMessage) -> tuple[str, str]:
    """(display name, id) of who wrote ``msg``."""
    if msg.from_ is not None and not (msg.sender_chat is not None and msg.from_.is_bot
                                      and msg.from_.username == "GroupAnonymousBot"):
        return msg.from_.display_name, str(msg.from_.id)
    if msg.sender_chat is not None:  # channel posts, anonymous admins, linked channels
        name = msg.author_signature or msg.sender_chat.display_name
        return name, str(msg.sender_chat.id)
    return msg.chat.display_name, str(msg.chat.id)


def attachments(gateway: str, msg: TgMessage) -> tuple[Attachment, ...]:
    """The files of ``msg`` as references (:func:`files.file_ref`): nothing is downloaded here."""
    out: list[Attachment] = []
    if msg.photo:
        p = max(msg.photo, key=lambda s: (s.width * s.height, s.file_size or 0))
        out.append(Attachment(name=f"photo_{p.file_unique_id or msg.message_id}.jpg", content_type="image/jpeg",
                              size=p.file_size, url=file_ref(gateway, p.file_id)))
    for attr, default_name, default_type in FILE_KINDS:
        f: FileObject | None = getattr(msg, attr)
        if f is None:
            continue
        name = f.file_name or (
            " - ".join(p for p in (f.performer, f.title) if p) if attr == "audio" else ""
        ) or default_name
        out.append(Attachment(name=name, content_type=f.mime_type or default_type, size=f.file_size,
                              url=file_ref(gateway, f.file_id)))
    if msg.sticker is not None:
        s = msg.sticker
        name, ctype = ("sticker.tgs", "application/x-tgsticker") if s.is_animated else (
            ("sticker.webm", "video/webm") if s.is_video else ("sticker.webp", "image/webp"))
        out.append(Attachment(name=name, content_type=ctype, size=s.file_size, url=file_ref(gateway, s.file_id),
                              caption=s.emoji or ""))
    return tuple(out)


def sender_allowed(config: TelegramConfig, msg: TgMessage, opts: TelegramBindingOptions) -> bool:
    """Whether the binding with ``opts`` takes a message from this sender (bots, ``allow_users``)."""
    user = msg.from_
    if effective(config, opts, "ignore_bots") and user is not None and user.is_bot:
        return False
    if not opts.allow_users:
        return True
    ids: set[str] = set()
    if user is not None:
        ids.add(str(user.id))
        if user.username:
            ids.add("@" + user.username.lower())
    elif msg.sender_chat is not None:
        ids.add(str(msg.sender_chat.id))
        if msg.sender_chat.username:
            ids.add("@" + msg.sender_chat.username.lower())
    for entry in opts.allow_users:
        e = entry.strip()
        e = e.lower() if e.startswith("@") else e
        if e in ids or ("@" + e.lower()) in ids:
            return True
    return False


def command(text: str, msg: TgMessage, me: User | None) -> tuple[bool, str]:
    """Bot commands (``/help``, ``/help@this_bot``) become core commands; a command
    addressed to another bot is ordinary text."""
    entities = msg.entities if msg.text is not None else msg.caption_entities
    first = next((e for e in entities if e.type == "bot_command" and e.offset == 0), None)
    if first is None:
        if text.startswith("/") and not entities and len(text) > 1 and text[1].isalpha():
            first_word = text.split(maxsplit=1)[0]
            if "@" not in first_word:
                return True, text
        return False, text
    word = text[: first.length]
    rest = text[first.length:]
    if "@" in word:
        cmd, _, target = word.partition("@")
        if me is not None and me.username and target.lower() != me.username.lower():
            return False, text
        word = cmd
    if word.lower() == "/start":
        # Telegram's "Start" button (and deep links /start <payload>): show the core's help
        return True, "/help"
    return True, word + rest


def to_message(gateway: str, me: User | None, update: Update, msg: TgMessage, edited: bool,
               binding: Binding | None, raw: dict[str, Any]) -> Message | None:
    """``msg`` (carried by ``update``) as a core Message; None for a service message or one with
    nothing to carry. ``binding`` is the one it arrived through (an ``@username`` chat is kept)."""
    thread = thread_of(msg)
    if msg.text is not None:
        text = entities_to_text(msg.text, msg.entities)
    else:
        text = entities_to_text(msg.caption or "", msg.caption_entities)
    is_command, text = command(text, msg, me)
    files = attachments(gateway, msg)
    if not text and not files:
        return None
    name, sender_id = sender(msg)
    reply_to = None
    r = msg.reply_to_message
    # in a forum topic every message "replies" to the topic's creation message; not a real reply
    if r is not None and not (thread is not None and r.message_id == msg.message_thread_id):
        reply_to = str(r.message_id)
    chat = binding.address.chat if binding is not None and binding.address.chat.startswith("@") \
        else str(msg.chat.id)
    mid = f"telegram:{gateway}:{msg.chat.id}:{msg.message_id}"
    if edited:
        # edit_date alone can repeat within one second; the update id keeps each edit distinct
        # and is the same on redelivery, so the id stays idempotent
        mid += f":edit:{msg.edit_date or 0}:{update.update_id}"
    when = msg.edit_date if edited and msg.edit_date else msg.date
    return Message(
        id=mid,
        origin=Address(gateway, chat, thread),
        sender=name,
        sender_id=sender_id,
        text=text,
        # an edit carries the original's id in edit_of only: the core records native_id in its
        # message map, and a second entry with the same native id (the edit) would shadow the
        # original there, so later replies/edits could no longer find the original's copies
        native_id=None if edited else str(msg.message_id),
        attachments=files,
        reply_to=reply_to,
        edit_of=str(msg.message_id) if edited else None,
        is_command=is_command,
        created=dt.datetime.fromtimestamp(when, dt.UTC) if when else dt.datetime.now(dt.UTC),
        raw=raw,
    )
