"""Outbound -> ``chat.postMessage`` / ``chat.update`` / ``chat.delete``, with files and threads.

The core has split the text to ``max_text`` already; the first part carries the attachments.
A text that cannot go with its files as the upload's comment is posted first, and its ts is kept
in the kv until the files are up, so a retry does not post it twice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from claudemesh_gateway import Address, Attachment, DeliveryError, Outbound, RateLimit, SendResult
from claudemesh_gateway.plugins.slack import mrkdwn
from claudemesh_gateway.plugins.slack.config import RateConfig, SlackBindingOptions, binding_options
from claudemesh_gateway.plugins.slack.files import FILE_REFUSALS, split_uploads

if TYPE_CHECKING:
    from claudemesh_gateway.plugins.slack.gateway import SlackGateway

__all__ = ["TEXT_FIRST_KEY", "Egress", "rate_limits"]

log = logging.getLogger(__name__)

TEXT_FIRST_KEY = "text_first"  # kv: text_first:<idempotency key> -> ts of a text posted ahead of its files


def rate_limits(gateway: str, rate: RateConfig, to: Address) -> Sequence[RateLimit]:
    """Per channel and per workspace (see :class:`RateConfig`)."""
    return (
        RateLimit(scope=f"slack:{gateway}:channel:{to.chat}", per_second=rate.per_channel_per_s,
                  burst=rate.per_channel_burst),
        RateLimit(scope=f"slack:{gateway}:workspace", per_second=rate.workspace_per_s, burst=rate.workspace_burst),
    )


class Egress:
    """Sending of one gateway."""

    def __init__(self, gateway: SlackGateway) -> None:
        self.gw = gateway

    async def send(self, out: Outbound) -> SendResult:
        gw = self.gw
        if gw.api.web is None:
            raise DeliveryError(f"slack gateway {gw.name} is not started")
        opts = binding_options(out.options)
        channel = out.to.chat
        if out.message.deleted:
            if not out.edit_of:
                return SendResult()
            try:
                await self._chat("chat_delete", channel=channel, ts=out.edit_of)
            except DeliveryError as exc:
                if getattr(exc, "slack_error", "") != "message_not_found":
                    raise
            return SendResult(native_ids=(out.edit_of,), thread=gw.threads.parent(channel, out.edit_of))
        attachments = out.attachments if out.part == 1 else ()
        if out.edit_of:
            # the files went up with the original; an edit changes the text (files that were
            # described by link are described again, as in the original)
            described = [a for a in attachments if a.data is None and _is_http(a.url)]
            text = self._final_text(out, opts, described) or "\u200b"
            await self._chat("chat_update", channel=channel, ts=out.edit_of, text=text)
            return SendResult(native_ids=(out.edit_of,), thread=gw.threads.parent(channel, out.edit_of))
        files, described = split_uploads(attachments, gw.config.upload_max_bytes)
        text = self._final_text(out, opts, described)
        thread = self._thread_for(out, opts)
        if not files:
            ts = await self._post(out, opts, channel, text or "\u200b", thread)
            return SendResult(native_ids=(ts,) if ts else (), thread=thread)
        native: list[str] = []
        comment: str | None = text or None
        # text first: its ts is kept in the gateway's kv until the files are up (or refused for
        # good), so a retry, even after a restart, does not post the text twice
        key = f"{TEXT_FIRST_KEY}:{out.idempotency_key}" if out.idempotency_key else ""
        if text and (gw.config.customize or len(text) > gw.config.upload_comment_max):
            # (as the sender's username with customize), then the files under it
            saved = await gw.ctx.kv_get(key) if key else None
            ts = saved if isinstance(saved, str) else ""
            if not ts:
                ts = await self._post(out, opts, channel, text, thread)
                if key and ts:
                    await gw.ctx.kv_set(key, ts)
            if ts:
                native.append(ts)
            comment = None
        text_first = bool(key and text and comment is None)
        try:
            native += await gw.files.upload(channel, thread, files, comment)
        except DeliveryError as exc:
            refusal = getattr(exc, "slack_error", "")
            if not exc.permanent:
                raise  # retried; the text posted first stays remembered
            if text_first:
                await gw.ctx.kv_delete(key)
            if refusal not in FILE_REFUSALS:
                raise
            # the workspace will not take these files: the message goes without them
            log.warning("gateway %s: Slack refused the file(s) for %s (%s); sent as a description",
                        gw.name, channel, refusal)
            lines = mrkdwn.escape("\n".join(a.describe() for a in files))
            rest = lines if comment is None else f"{comment}\n{lines}"
            ts = await self._post(out, opts, channel, rest, thread)
            native.append(ts)
            return SendResult(native_ids=tuple(n for n in native if n), thread=thread)
        if text_first:
            await gw.ctx.kv_delete(key)
        return SendResult(native_ids=tuple(native), thread=thread)

    def _final_text(self, out: Outbound, opts: SlackBindingOptions, described: Sequence[Attachment] = ()) -> str:
        """The escaped text of ``out`` with a line per ``described`` attachment ("" if none)."""
        # escape again here: idempotent, and it also covers text rendered by another plugin's
        # render_text hook. Mesh text can never carry a live <!channel>/<@U...> into Slack.
        text = mrkdwn.escape(out.text)
        if opts.allow_mass_mentions or _truthy(out.options.get("allow_mass_mentions")):
            text = mrkdwn.enable_mass_mentions(text)
        if described:
            # a link only for public http(s) URLs: a reference (slackfile:, tgfile:) means nothing here
            lines = "\n".join(
                mrkdwn.escape(a.describe() + (f" {a.url}" if _is_http(a.url) else "")) for a in described
            )
            text = f"{text}\n{lines}" if text else lines
        return text

    def _thread_for(self, out: Outbound, opts: SlackBindingOptions) -> str | None:
        if out.reply_to:
            # Slack threads hang off the parent: a reply to a reply goes into the parent's thread
            return self.gw.threads.parent(out.to.chat, out.reply_to, out.reply_to)
        return out.to.thread or opts.thread_ts

    async def _post(
        self, out: Outbound, opts: SlackBindingOptions, channel: str, text: str, thread: str | None
    ) -> str:
        """chat.postMessage; returns the new message's ts."""
        cfg = self.gw.config
        kwargs: dict[str, Any] = {
            "channel": channel,
            "text": text,
            "unfurl_links": cfg.unfurl,
            "unfurl_media": cfg.unfurl,
        }
        if thread:
            kwargs["thread_ts"] = thread
        if cfg.customize:
            if out.message.sender:
                kwargs["username"] = out.message.sender[:80]
            icon = opts.icon_url or cfg.icon_url
            if icon:
                kwargs["icon_url"] = icon
        resp = await self._chat("chat_postMessage", **kwargs)
        ts = str(resp.get("ts") or "")
        if ts:
            self.gw.threads.remember(channel, ts, thread)
        return ts

    async def _chat(self, method: str, **kwargs: Any) -> Any:
        hint = "customize = true needs chat:write.customize" if "username" in kwargs else ""
        return await self.gw.api.call(method, kwargs, scope_hint=hint)


def _is_http(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("http://", "https://"))


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes"))
