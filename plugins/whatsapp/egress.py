"""Outbound -> Twilio's Messages API (``messages.create_async`` of the ``twilio`` library).

Free-form text (with at most one file) inside the user's 24-hour session window; outside it a
template (``content_sid``), within Meta's messaging limit of unique users a day
(:class:`MessagingLimit`), or nothing. Twilio's errors become :class:`DeliveryError`, with
``Retry-After`` read by the core's parser (``transport.last_retry_after``). Files given as bytes are
offered to Twilio from the gateway's :class:`~.media.MediaStore` (``GET /gateways/<name>/media/<token>``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from claudemesh_gateway import Attachment, DeliveryError, GatewayState, Outbound, SendResult
from claudemesh_gateway.plugins.whatsapp.config import WhatsAppBindingOptions, WhatsAppConfig, binding_options
from claudemesh_gateway.plugins.whatsapp.media import MediaStore, served_content_type
from claudemesh_gateway.plugins.whatsapp.signature import public_request_url
from claudemesh_gateway.plugins.whatsapp.text import mask_number, normalise_number, render_template_variables
from claudemesh_gateway.plugins.whatsapp.transport import forget_last_call, last_retry_after
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.rest import Client

__all__ = ["MessagingLimit", "WhatsAppEgress", "template_kwargs"]

log = logging.getLogger(__name__)

DAY = 86400.0
INITIATED_KEY = "initiated"
INITIATED_SAVE_EVERY = 60.0  # seconds between saves of refreshed (not new) entries


class MessagingLimit:
    """Meta's messaging limit: the unique users reached by business-initiated messages per rolling 24 h.

    The book ``{number: epoch seconds}`` is one value in ``ctx.kv`` (key ``initiated``), loaded on
    first use; ``limit`` 0 means no cap (nothing is counted)."""

    def __init__(self, ctx: Any, limit: int) -> None:
        self.ctx, self.limit = ctx, limit
        self._entries: dict[str, float] | None = None
        self._lock = asyncio.Lock()
        self._saved = 0.0

    async def _book(self, now: float) -> dict[str, float]:
        if self._entries is None:
            raw = await self.ctx.kv_get(INITIATED_KEY)
            self._entries = {str(k): float(v) for k, v in raw.items()
                           if isinstance(v, int | float)} if isinstance(raw, dict) else {}
        for number in [n for n, at in self._entries.items() if now - at >= DAY]:
            del self._entries[number]
        return self._entries

    async def count(self, now: float | None = None) -> int:
        """Unique users reached by business-initiated messages in the last 24 hours."""
        async with self._lock:
            return len(await self._book(time.time() if now is None else now))

    async def take(self, to: str) -> bool:
        """Record ``to`` as reached now; True when that took a new slot. Raises when none is free."""
        if not self.limit:
            return False  # no cap: nothing to count
        async with self._lock:
            now = time.time()
            book = await self._book(now)
            added = to not in book
            if added and len(book) >= self.limit:
                wait = max(min(book.values()) + DAY - now, 1.0)
                raise DeliveryError(
                    f"WhatsApp messaging limit: {self.limit} unique users already reached by business-initiated "
                    f"messages in the last 24 h (daily_unique_users); held, next slot in {wait / 60:.0f} min",
                    permanent=False, retry_after=wait)
            book[to] = now
            # a new user is written at once; a user already counted only refreshes its time, which
            # is saved at most once a minute (the whole book is one value: keep writes rare)
            if added or now - self._saved >= INITIATED_SAVE_EVERY:
                await self.ctx.kv_set(INITIATED_KEY, book)
                self._saved = now
            return added

    async def give_back(self, to: str, added: bool) -> None:
        """Undo :meth:`take` when Twilio took nothing (so Meta counted nothing)."""
        if not added:
            return
        async with self._lock:
            book = await self._book(time.time())
            if book.pop(to, None) is not None:
                await self.ctx.kv_set(INITIATED_KEY, book)

    async def save(self) -> None:
        """Write the refreshed times not saved yet (on stop)."""
        if self._entries is not None and self.limit:
            async with self._lock:
                await self.ctx.kv_set(INITIATED_KEY, self._entries)


class _WindowClosed(DeliveryError):
    """Twilio 63016: free-form text outside the 24-hour window (internal; callers re-raise a DeliveryError)."""


class WhatsAppEgress:
    """``send`` and the files it offers to Twilio; mixed into :class:`~.gateway.WhatsAppGateway`.

    The gateway provides what is declared below, the client ``_client`` (set by ``start``), ``set_state``,
    ``public_url``, ``gateway_path``, ``scrub``, ``is_opted_out``, ``set_opt_out`` and ``in_window``."""

    MEDIA_PATH: ClassVar[str]
    STATUS_PATH: ClassVar[str]
    name: str
    config: WhatsAppConfig
    ctx: Any
    media: MediaStore
    initiated: MessagingLimit
    _client: Client | None

    async def send(self, out: Outbound) -> SendResult:
        if self._client is None:
            raise DeliveryError("whatsapp gateway not started", permanent=False, retry_after=1.0)
        try:
            to = normalise_number(out.to.chat)
        except ValueError:
            raise DeliveryError(f"not a WhatsApp address: {out.to.chat!r} (expected whatsapp:+E164)",
                                permanent=True) from None
        opts = binding_options(out.options)
        if opts.allow_numbers and to not in opts.allow_numbers:
            raise DeliveryError(f"{mask_number(to)} is not in this binding's allow_numbers", permanent=True)
        if await self.is_opted_out(to):
            raise DeliveryError("recipient opted out (STOP); they can send START to opt back in", permanent=True)

        cfg = self.config
        kwargs: dict[str, Any] = {"to": to}
        if cfg.from_number:
            kwargs["from_"] = cfg.from_number
        if cfg.messaging_service_sid:
            kwargs["messaging_service_sid"] = cfg.messaging_service_sid
        if cfg.status_callback and self.public_url:
            kwargs["status_callback"] = public_request_url(self.public_url, self.gateway_path(self.STATUS_PATH))

        if not await self.in_window(to):
            if opts.outside_window == "template" and opts.template_content_sid:
                kwargs.update(template_kwargs(out, opts))
                return await self._initiate(kwargs, to, out)
            raise DeliveryError(
                "outside WhatsApp 24-hour window and no template configured: held until the user writes "
                "(replay it from the dead letters then)", permanent=True)

        body, media = await self._body_and_media(out)
        kwargs["body"] = body
        if media:
            kwargs["media_url"] = media
        try:
            msg = await self._create(kwargs, to, "session")
        except _WindowClosed:
            # Twilio knows better than our record (63016): use the template right away if allowed
            if opts.outside_window != "template" or not opts.template_content_sid:
                raise DeliveryError("outside WhatsApp 24-hour window (Twilio 63016) and no template configured",
                                    permanent=True) from None
            for key in ("body", "media_url"):
                kwargs.pop(key, None)
            kwargs.update(template_kwargs(out, opts))
            return await self._initiate(kwargs, to, out)
        return self._sent(msg, to, "session", out)

    # -- files, outbound ------------------------------------------------------------------------------------
    def media_limit(self, content_type: str) -> int:
        """The largest file WhatsApp takes of this type: ``max_image_bytes`` for images (capped by
        ``max_media_bytes``), else ``max_media_bytes``."""
        cfg = self.config
        if content_type.split(";", 1)[0].strip().lower().startswith("image/"):
            return min(cfg.max_image_bytes, cfg.max_media_bytes)
        return cfg.max_media_bytes

    async def _body_and_media(self, out: Outbound) -> tuple[str, list[str]]:
        """The free-form body and at most one media URL.

        WhatsApp takes one file per message (Twilio ignores any further ``MediaUrl``): the first
        attachment that can be sent rides with the text, every other one is described in it
        (``[image cat.jpg, 88 KiB]``). One outbound part stays one Twilio message, so a retry never
        re-sends a file that went out, and the core's rate limit counts what Twilio counts."""
        media: list[str] = []
        described: list[Attachment] = []
        for index, att in enumerate(out.attachments):
            url = await self._media_url(att, out, index) if not media else None
            if url:
                media.append(url)
            else:
                described.append(att)
        body = out.text
        if described:
            lines = [(dataclasses.replace(a, size=len(a.data)) if a.size is None and a.data is not None
                      else a).describe() for a in described]
            body = "\n".join([body, *lines]) if body else "\n".join(lines)
        return body[:1600], media

    async def _media_url(self, att: Attachment, out: Outbound, index: int) -> str | None:
        """A URL Twilio can fetch ``att`` from, or None (then it is described)."""
        ctype = served_content_type(att.content_type, att.name)
        limit = self.media_limit(ctype)
        if limit <= 0 or (att.size is not None and att.size > limit):
            return None
        if att.data is not None:
            data = att.data
        elif att.url and att.url.startswith(("https://", "http://")):
            return att.url  # a public URL: Twilio fetches it itself
        else:
            # a reference the core did not fetch, or nothing at all. A file of ours going back to WhatsApp
            # (Twilio cannot read its own media URL when HTTP auth is enforced) arrives with its bytes:
            # capabilities.reuses_own_files is False, so the core fetched it inside its byte budget
            return None
        if len(data) > limit or not self._can_host(len(data)):
            return None
        token = await self.media.put(data, ctype, key=f"{out.idempotency_key or out.message.id}|{index}")
        if token is None:
            return None
        log.debug("whatsapp %s: offering a %s file of %d bytes to Twilio", self.name, ctype, len(data))
        return public_request_url(self.public_url or "", self.gateway_path(f"{self.MEDIA_PATH}/{token}"))

    def _can_host(self, size: int) -> bool:
        return bool(self.public_url) and 0 < size <= self.config.media_cache_bytes

    async def handle_media(self, request: web.Request) -> web.Response:
        """``GET``/``HEAD /gateways/<name>/media/<token>``: a file ``send`` offered to Twilio; 404 for
        anything else (unknown, expired or evicted)."""
        entry = await self.media.get(request.match_info.get("token", ""))
        if entry is None:
            raise web.HTTPNotFound(text="not found")
        return web.Response(body=entry.data, headers={
            "Content-Type": entry.content_type,
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Referrer-Policy": "no-referrer",
        })

    def _sent(self, msg: Any, to: str, mode: str, out: Outbound) -> SendResult:
        sid = str(msg.sid or "")
        log.debug("whatsapp %s: sent %s to %s (%s, part %d/%d)", self.name, sid, mask_number(to), mode,
                  out.part, out.parts)
        return SendResult(native_ids=(sid,) if sid else ())

    # -- Meta's messaging limit: unique users reached by business-initiated messages per rolling 24 h --------
    async def _initiate(self, kwargs: dict[str, Any], to: str, out: Outbound) -> SendResult:
        """Send a template (a business-initiated message) within ``daily_unique_users``.

        A recipient already reached in the last 24 hours costs nothing more; a new one takes a
        slot, or, when the slots are full, the message is held (transient, with the wait until
        the oldest slot frees as ``retry_after``) instead of being sent into error 63018."""
        added = await self.initiated.take(to)
        try:
            msg = await self._create(kwargs, to, "template")
        except _WindowClosed:
            await self.initiated.give_back(to, added)
            raise DeliveryError("template rejected outside the 24-hour window (Twilio 63016)",
                                permanent=True) from None
        except DeliveryError:
            await self.initiated.give_back(to, added)  # Twilio took nothing, Meta counted nothing
            raise
        return self._sent(msg, to, "template", out)

    async def initiated_count(self, now: float | None = None) -> int:
        """Unique users reached by business-initiated messages in the last 24 hours."""
        return await self.initiated.count(now)

    async def _create(self, kwargs: dict[str, Any], to: str, mode: str) -> Any:
        """``messages.create_async``; Twilio errors become DeliveryError (63016 -> _WindowClosed)."""
        assert self._client is not None
        forget_last_call()
        try:
            return await self._client.messages.create_async(**kwargs)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise await self._map_error(exc, to, mode) from None
        except TwilioException as exc:
            raise DeliveryError(f"twilio client error: {type(exc).__name__}", permanent=False) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DeliveryError(f"twilio API unreachable: {type(exc).__name__}", permanent=False) from None

    async def _map_error(self, exc: TwilioRestException | TwilioServiceException, to: str,
                         mode: str) -> DeliveryError:
        status = int(getattr(exc, "status", 0) or 0)
        code = str(getattr(exc, "code", "") or "")
        raw_msg = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", "") or ""
        text = self.scrub(str(raw_msg).replace("Unable to create record: ", ""))[:200]
        if code == "63016":
            await self.ctx.kv_delete(f"window:{to}")  # Twilio says the window is closed: believe it
            return _WindowClosed("outside WhatsApp 24-hour window (Twilio 63016)", permanent=True)
        if code == "21610":
            await self.set_opt_out(to, True, "twilio 21610")
            return DeliveryError("recipient opted out (STOP) (Twilio 21610)", permanent=True)
        if code == "63018":  # Meta's messaging limit (or the channel's rate) was hit anyway: hold, retry later
            return DeliveryError("WhatsApp messaging limit exceeded (Twilio 63018); held and retried in 5 min, "
                                 "check daily_unique_users against the sender's tier", permanent=False,
                                 retry_after=last_retry_after(300.0))
        if status == 429 or code == "20429":
            return DeliveryError(f"rate limited by Twilio ({code or status})", permanent=False,
                                 retry_after=last_retry_after(1.0))
        if status >= 500 or status == 0:
            return DeliveryError(f"Twilio server error {status} {code}".strip(), permanent=False,
                                 retry_after=last_retry_after(None))
        if status in (401, 403) or code in ("20003", "20005"):
            self.set_state(GatewayState.BAD_CREDENTIALS, f"Twilio refused the credentials ({code or status})")
            return DeliveryError(f"Twilio refused the credentials ({code or status})", permanent=True)
        return DeliveryError(f"Twilio error {code or status}: {text}".rstrip(": "), permanent=True)


def template_kwargs(out: Outbound, opts: WhatsAppBindingOptions) -> dict[str, Any]:
    """``content_sid`` and ``content_variables`` of a template message for ``out``."""
    kwargs: dict[str, Any] = {"content_sid": opts.template_content_sid}
    text = out.text
    if out.attachments:  # a template carries no media: the files are named in its text
        text = "\n".join([text, *(a.describe() for a in out.attachments)]) if text else "\n".join(
            a.describe() for a in out.attachments)
    variables = render_template_variables(opts.template_variables, {
        "sender": out.message.sender, "text": text, "topic": out.message.origin.chat,
        "origin": str(out.message.origin), "part": out.part, "parts": out.parts,
    })
    if variables:
        kwargs["content_variables"] = json.dumps(variables, ensure_ascii=False)
    return kwargs
