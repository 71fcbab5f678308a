"""Core Outbounds -> Bot API calls: sendMessage / sendPhoto / sendDocument, editMessageText /
editMessageCaption, replies, the re-send as plain text when a chat rejects HTML, resumable
multi-call sends, rate limits, and Bot API failures as ``DeliveryError``."""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from claudemesh_gateway import Address, Attachment, DeliveryError, Outbound, RateLimit, SendResult
from claudemesh_gateway.plugins.telegram.config import (
    RateConfig,
    TelegramConfig,
    bound_thread,
    coerce_options,
    effective,
    is_html,
)
from claudemesh_gateway.plugins.telegram.files import can_upload, upload
from claudemesh_gateway.plugins.telegram.format import (
    html_to_plain,
    markup,
    render,
    shown,
    truncate_utf16,
    utf16_len,
)
from claudemesh_gateway.plugins.telegram.transport import retry_after_seconds
from telegram import Bot, LinkPreviewOptions, ReplyParameters
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

log = logging.getLogger(__name__)

__all__ = [
    "MAX_CAPTION",
    "Egress",
    "chat_id",
    "delivery_error",
    "is_group",
    "rate_limits",
    "render_text",
    "reply_parameters",
]

MAX_CAPTION = 1024
PROGRESS_KEPT = 1000  # multi-call sends whose partial progress is remembered


def chat_id(chat: str) -> int | str:
    """Numeric chat ids as int; ``@channelusername`` stays a string."""
    try:
        return int(chat)
    except ValueError:
        return chat


def is_group(chat: str) -> bool:
    return chat.startswith(("-", "@"))


def reply_parameters(reply_to: str | None) -> ReplyParameters | None:
    """A reply to ``reply_to`` that is still sent when the original is gone."""
    if not reply_to:
        return None
    try:
        return ReplyParameters(message_id=int(reply_to), allow_sending_without_reply=True)
    except ValueError:
        return None


def is_parse_error(exc: BadRequest) -> bool:
    return "can't parse entities" in exc.message.lower() or "can't find end" in exc.message.lower()


def rate_limits(gateway: str, rate: RateConfig, to: Address) -> list[RateLimit]:
    """The token buckets of a send to ``to``: its chat, its group, and the bot as a whole."""
    limits = [RateLimit(scope=f"telegram:{gateway}:chat:{to.chat}", per_second=rate.per_chat_per_s,
                        burst=rate.per_chat_burst)]
    if is_group(to.chat):
        limits.append(RateLimit(scope=f"telegram:{gateway}:group:{to.chat}",
                                per_second=rate.per_group_per_min / 60.0, burst=rate.per_group_burst))
    limits.append(RateLimit(scope=f"telegram:{gateway}:global", per_second=rate.global_per_s,
                            burst=rate.global_burst))
    return limits


def render_text(config: TelegramConfig, text: str, out_options: Mapping[str, Any]) -> str:
    """Attributed plain text -> what ``send`` posts (format.render, with the binding's settings)."""
    opts = coerce_options(out_options)
    return render(text, html=is_html(config, opts), markdown=effective(config, opts, "markdown"),
                  neutralise=opts.mentions == "neutralise")


def delivery_error(exc: TelegramError, chat: str, desc: str) -> DeliveryError:
    """What a failed Bot API call means to the core; ``desc`` is the error's text with secrets scrubbed."""
    if isinstance(exc, RetryAfter):
        seconds = retry_after_seconds(exc)
        return DeliveryError(f"telegram: flood control in chat {chat} (429), retry after {seconds:g}s",
                             retry_after=seconds)
    if isinstance(exc, ChatMigrated):
        return DeliveryError(
            f"telegram: group {chat} was upgraded to a supergroup with id {exc.new_chat_id}; "
            f"update the route's chat", permanent=True)
    if isinstance(exc, Forbidden):
        return DeliveryError(f"telegram: not allowed to post in chat {chat}: {desc}", permanent=True)
    if isinstance(exc, BadRequest):
        return DeliveryError(f"telegram: chat {chat} refused the message: {desc}", permanent=True)
    if isinstance(exc, InvalidToken):
        return DeliveryError("telegram: bot token rejected (401)", retry_after=60.0)
    if isinstance(exc, TimedOut):
        return DeliveryError(f"telegram: timed out sending to chat {chat}")
    if isinstance(exc, NetworkError):
        return DeliveryError(f"telegram: {desc}")
    return DeliveryError(f"telegram: {desc}")


async def html_or_plain(call: Callable[..., Awaitable[Any]], field: str, value: str | None, html: bool, *,
                        on_plain: Callable[[BadRequest], None] | None = None, **kwargs: Any) -> Any:
    """``call`` with ``value`` in ``field`` as HTML; when the chat cannot parse the markup, again as the
    plain text a reader should see (a message is never dropped for a formatting problem)."""
    try:
        return await call(**{field: value}, parse_mode="HTML" if html else None, **kwargs)
    except BadRequest as exc:
        if not (html and value and is_parse_error(exc)):
            raise
        if on_plain is not None:
            on_plain(exc)
        return await call(**{field: html_to_plain(value)}, parse_mode=None, **kwargs)


class Egress:
    """The sends of one bot. Partial progress of multi-call sends (text + files) is kept by
    ``Outbound.idempotency_key``, so a retry after a transient failure does not re-send what already
    went out."""

    def __init__(self, gateway: str, config: TelegramConfig) -> None:
        self.gateway = gateway
        self.config = config
        self.progress: collections.OrderedDict[str, list[str]] = collections.OrderedDict()

    async def send(self, bot: Bot, out: Outbound) -> SendResult:
        """Post (or edit) ``out``. A failed Bot API call raises its ``TelegramError``."""
        opts = coerce_options(out.options)
        html = is_html(self.config, opts)
        thread = bound_thread(out.to.thread, opts)
        if not out.text.strip() and not out.attachments and not out.edit_of:
            return SendResult(native_ids=(), thread=thread)  # nothing Telegram would accept
        common: dict[str, Any] = {"chat_id": chat_id(out.to.chat)}
        if thread:
            try:
                common["message_thread_id"] = int(thread)
            except ValueError:
                raise DeliveryError(f"telegram: thread {thread!r} is not a forum topic id", permanent=True) from None
        if opts.disable_notification:
            common["disable_notification"] = True
        if opts.protect_content:
            common["protect_content"] = True
        preview = effective(self.config, opts, "link_preview")
        key = out.idempotency_key
        done = list(self.progress.get(key, [])) if key else []
        if out.edit_of:
            ids = [await self._edit(bot, out, common, html, preview)]
        else:
            ids = await self._send_new(bot, out, common, html, preview, done, key)
        if key:
            self.progress.pop(key, None)
        return SendResult(native_ids=tuple(ids), thread=thread)

    def _remember(self, key: str, ids: list[str]) -> None:
        if not key:
            return
        self.progress[key] = list(ids)
        self.progress.move_to_end(key)
        while len(self.progress) > PROGRESS_KEPT:
            self.progress.popitem(last=False)

    def _media_plan(self, atts: Sequence[Attachment]) -> tuple[list[Attachment], list[str]]:
        """Which attachments go as files, and descriptions for the ones that can't."""
        sendable: list[Attachment] = []
        described: list[str] = []
        for a in atts:
            if can_upload(a, self.gateway, self.config.upload_max_bytes):
                sendable.append(a)
            else:
                described.append(a.describe())
        return sendable, described

    async def _send_new(self, bot: Bot, out: Outbound, common: dict[str, Any], html: bool, preview: bool,
                        done: list[str], key: str) -> list[str]:
        text = out.text
        sendable, described = self._media_plan(out.attachments)
        if described:
            extra = "\n".join(markup(d, html) for d in described)
            text = f"{text}\n{extra}" if text else extra
        reply_to = out.reply_to
        steps: list[tuple[str, Any]] = []
        if len(sendable) == 1 and utf16_len(shown(text, html)) <= MAX_CAPTION:
            steps.append(("media", (sendable[0], text)))
        else:
            if text:
                steps.append(("text", text))
            steps.extend(("media", (a, markup(a.caption, html))) for a in sendable)
        ids = list(done)
        for i, (kind, payload) in enumerate(steps):
            if i < len(done):
                continue  # sent before a transient failure; don't repeat it
            rt = reply_to if i == 0 else None
            if kind == "text":
                ids.append(await self._send_text(bot, payload, common, html, preview, rt))
            else:
                att, caption = payload
                ids.append(await self._send_media(bot, att, caption, common, html, preview, rt))
            self._remember(key, ids)
        return ids

    async def _send_text(self, bot: Bot, text: str, common: dict[str, Any], html: bool, preview: bool,
                         reply_to: str | None) -> str:
        def on_plain(exc: BadRequest) -> None:
            log.warning("telegram %s: chat %s rejected HTML (%s); re-sending as plain text",
                        self.gateway, common["chat_id"], exc.message)

        m = await html_or_plain(bot.send_message, "text", text, html, on_plain=on_plain, **common,
                                link_preview_options=LinkPreviewOptions(is_disabled=not preview),
                                reply_parameters=reply_parameters(reply_to))
        return str(m.message_id)

    async def _send_media(self, bot: Bot, att: Attachment, caption: str, common: dict[str, Any], html: bool,
                          preview: bool, reply_to: str | None) -> str:
        file, photo = upload(att, self.gateway)
        call, field = (bot.send_photo, "photo") if photo else (bot.send_document, "document")
        cap = caption or None
        try:
            m = await html_or_plain(call, "caption", cap, html and bool(cap), **common, **{field: file},
                                    reply_parameters=reply_parameters(reply_to))
        except BadRequest as exc:
            # the file itself was refused (unknown file id, URL Telegram can't fetch, wrong type):
            # deliver the description instead of losing the message
            log.warning("telegram %s: chat %s refused file %r (%s); sending its description",
                        self.gateway, common["chat_id"], att.name, exc.message)
            desc = att.describe()
            if caption:
                desc = f"{shown(caption, html)}\n{desc}"
            return await self._send_text(bot, markup(desc, html), common, html, preview, reply_to)
        return str(m.message_id)

    async def _edit(self, bot: Bot, out: Outbound, common: dict[str, Any], html: bool, preview: bool) -> str:
        assert out.edit_of is not None
        kwargs: dict[str, Any] = {
            "chat_id": common["chat_id"], "message_id": int(out.edit_of),
            "link_preview_options": LinkPreviewOptions(is_disabled=not preview),
        }
        try:
            await html_or_plain(bot.edit_message_text, "text", out.text, html, **kwargs)
        except BadRequest as exc:
            msg = exc.message.lower()
            if "not modified" in msg:
                return out.edit_of
            if "no text in the message" in msg:
                # the copy is a file with a caption: edit the caption instead
                return await self._edit_caption(bot, out, kwargs, html)
            if "to edit not found" in msg or "can't be edited" in msg or "message_id_invalid" in msg:
                # the original is gone or too old: post the new text as a reply to it instead
                return await self._send_text(bot, markup("(edited) ", html) + out.text, common,
                                             html, preview, out.edit_of)
            raise
        return out.edit_of

    async def _edit_caption(self, bot: Bot, out: Outbound, kwargs: dict[str, Any], html: bool) -> str:
        assert out.edit_of is not None
        args = {"chat_id": kwargs["chat_id"], "message_id": kwargs["message_id"]}
        caption = out.text
        if utf16_len(shown(caption, html)) > MAX_CAPTION:
            caption = truncate_utf16(shown(caption, html), MAX_CAPTION)
            html = False
        try:
            await html_or_plain(bot.edit_message_caption, "caption", caption, html, **args)
        except BadRequest as exc:
            if "not modified" not in exc.message.lower():
                raise
        return out.edit_of
