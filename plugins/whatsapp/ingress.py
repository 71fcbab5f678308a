"""Twilio -> the core: the inbound message webhook, status callbacks and inbound media.

- ``POST /gateways/<name>/inbound``: a user wrote; verified (``signature.py``), it opens the 24-hour
  window, records a consent keyword (STOP / START) or becomes a :class:`Message` for the core.
- ``POST /gateways/<name>/status``: the status of a message we sent becomes a :class:`DeliveryStatus`
  event; a failed one a :class:`DeliveryFailed` event (and a notice toward the mesh if asked).
- Inbound ``MediaUrl<n>`` become ``twilio:<name>:<path>`` references read by ``fetch_attachment``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import mimetypes
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from aiohttp import web
from claudemesh_gateway import (
    Address,
    Attachment,
    DeliveryError,
    DeliveryFailed,
    DeliveryStatus,
    Message,
    MessageDropped,
)
from claudemesh_gateway.plugins.whatsapp.config import MB, WhatsAppConfig, binding_options
from claudemesh_gateway.plugins.whatsapp.media import media_path_of_ref, media_ref
from claudemesh_gateway.plugins.whatsapp.signature import (
    SETTINGS_HEADER,
    SIGNATURE_HEADER,
    public_request_url,
    verify_signature,
)
from claudemesh_gateway.plugins.whatsapp.text import (
    consent_keyword,
    failure_reason,
    mask_number,
    normalise_number,
)
from claudemesh_gateway.plugins.whatsapp.transport import TwilioHttpClient
from claudemesh_gateway.plugins.whatsapp.wire import InboundForm, StatusForm
from claudemesh_gateway.webhooks import MalformedHeader, header_value, parse_json_object, read_body
from pydantic import BaseModel, ValidationError

__all__ = ["EMPTY_TWIML", "MAX_REQUEST_BYTES", "StatusLog", "WhatsAppIngress", "twiml"]

log = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MAX_REQUEST_BYTES = 1 * MB  # a Twilio webhook (form or JSON); aiohttp's default cap

_Form = TypeVar("_Form", bound=BaseModel)


def twiml() -> web.Response:
    """The answer to every webhook we take: an empty TwiML document (nothing for Twilio to do)."""
    return web.Response(status=200, text=EMPTY_TWIML, content_type="text/xml")


class StatusLog:
    """The status callbacks taken: the last ``keep`` in ``ctx.kv`` (``status:recent``), and the
    (sid, status) pairs already seen, so a callback Twilio sends again counts once."""

    SEEN_KEEP: ClassVar[int] = 4096

    def __init__(self, ctx: Any, keep: int) -> None:
        self.ctx, self.keep = ctx, keep
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._lock = asyncio.Lock()

    async def record(self, form: StatusForm) -> bool:
        """Record a status callback; False (nothing recorded) when it was seen already."""
        key = (form.message_sid, form.message_status)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.SEEN_KEEP:
            self._seen.popitem(last=False)
        async with self._lock:
            recent = await self.ctx.kv_get("status:recent") or []
            recent.append({"sid": form.message_sid, "status": form.message_status,
                           "error": form.error_code, "at": time.time()})
            await self.ctx.kv_set("status:recent", recent[-self.keep:])
        return True


class WhatsAppIngress:
    """The webhooks and ``fetch_attachment``; mixed into :class:`~.gateway.WhatsAppGateway`.

    The gateway provides what is declared below (``_http`` and ``_auth`` are set by ``start``),
    ``public_url``, ``gateway_path``, ``bindings_for``, ``scrub``, ``is_opted_out`` and ``set_opt_out``."""

    INBOUND_PATH: ClassVar[str]
    STATUS_PATH: ClassVar[str]

    name: str
    config: WhatsAppConfig
    ctx: Any
    status_log: StatusLog
    _http: TwilioHttpClient | None
    _auth: tuple[str, str] | None

    async def _verified_params(self, request: web.Request, leaf: str) -> dict[str, str]:
        """Verify ``X-Twilio-Signature`` over the public URL; return the fields. 403 on failure."""
        cfg = self.config
        try:
            signature = header_value(request.headers, SIGNATURE_HEADER)
            settings_header = header_value(request.headers, SETTINGS_HEADER)
        except MalformedHeader as exc:
            log.warning("whatsapp %s: %s webhook refused: %s", self.name, leaf, exc)
            raise web.HTTPUnauthorized(text="malformed signature header") from None
        public_url = self.public_url
        if not public_url or not signature:
            log.warning("whatsapp %s: %s webhook refused (%s)", self.name, leaf,
                        "no public_url configured" if not public_url else "unsigned")
            raise web.HTTPForbidden(text="invalid signature")
        url = public_request_url(public_url, self.gateway_path(leaf), request.rel_url.raw_query_string)
        token = cfg.auth_token.get_secret_value()
        shared = cfg.webhook_shared_key.get_secret_value() if cfg.webhook_shared_key else None
        if request.content_type == "application/json":
            raw = await read_body(request, max_bytes=MAX_REQUEST_BYTES)
            ok = verify_signature(token, url, None, signature, raw_body=raw, settings_header=settings_header,
                                  shared_key=shared)
            if ok:  # 400: not JSON, not an object, nested absurdly deep
                params = {str(k): v for k, v in parse_json_object(raw).items()}
        else:
            form = await request.post()
            ok = verify_signature(token, url, form, signature, settings_header=settings_header,
                                  shared_key=shared)
            params = {str(k): str(v) for k, v in form.items()}
        if not ok:
            log.warning("whatsapp %s: %s webhook with an invalid signature refused", self.name, leaf)
            raise web.HTTPForbidden(text="invalid signature")
        return params

    async def _verified_form(self, request: web.Request, leaf: str, model: type[_Form],
                             what: str) -> tuple[_Form, dict[str, str]]:
        """The verified fields as ``model`` (400 ``not <what>`` when they do not fit), and as they came."""
        params = await self._verified_params(request, leaf)
        try:
            return model.model_validate(params), params
        except ValidationError:
            raise web.HTTPBadRequest(text=f"not {what}") from None

    async def handle_inbound(self, request: web.Request) -> web.Response:
        form, params = await self._verified_form(request, self.INBOUND_PATH, InboundForm,
                                                 "a WhatsApp message webhook")
        if not form.from_.lower().startswith("whatsapp:"):
            # an SMS to a number that shares the webhook: not ours to relay as WhatsApp
            log.warning("whatsapp %s: non-WhatsApp message (%s) ignored", self.name, form.from_.partition(":")[0]
                        if ":" in form.from_ else "sms")
            return twiml()
        try:
            sender = normalise_number(form.from_)
        except ValueError:
            raise web.HTTPBadRequest(text="not a WhatsApp sender address") from None
        now = time.time()
        # Any message from the user opens (refreshes) the 24-hour session window.
        await self.ctx.kv_set(f"window:{sender}", now)

        bindings = self.bindings_for(sender, inbound=True)
        consent = consent_keyword(form.body) if form.num_media == 0 else None
        if consent == "in" and form.body.strip().upper() == "YES" and not await self.is_opted_out(sender):
            consent = None  # a plain "yes" from someone not opted out is just an answer
        if consent is not None:
            await self.set_opt_out(sender, consent == "out", form.body.strip().upper())
            log.info("whatsapp %s: %s opted %s (%s)", self.name, mask_number(sender), consent,
                     form.body.strip().upper())
            if any(binding_options(b.options).notify_status for b in bindings):
                state = "opted out of" if consent == "out" else "opted back in to"
                await self.ctx.submit(self._notice(
                    f"whatsapp:{self.name}:{form.message_sid}", sender,
                    f"ℹ {sender} {state} WhatsApp messages ({form.body.strip().upper()})"))
            return twiml()

        message = self._to_message(form, sender, params, now)
        if not bindings:
            log.warning("whatsapp %s: message from unbound number %s dropped", self.name, mask_number(sender))
            self.ctx.emit(MessageDropped(message=message, reason="not_bound"))
            return twiml()
        result = await self.ctx.submit(message)
        log.debug("whatsapp %s: inbound %s from %s -> %s", self.name, form.message_sid, mask_number(sender),
                  result.status)
        return twiml()

    def _to_message(self, form: InboundForm, sender: str, params: Mapping[str, str], now: float) -> Message:
        attachments = []
        for n, media in enumerate(form.media()):
            ext = mimetypes.guess_extension(media.content_type.split(";")[0].strip()) or ""
            leaf = media.url.rstrip("/").rsplit("/", 1)[-1] or f"media{n}"
            # Twilio's own media: a reference only this gateway can read (the URL may need the account's
            # credentials); any other URL stays as it came
            ref = self._media_ref(media.url)
            attachments.append(Attachment(name=f"{leaf}{ext}", content_type=media.content_type, url=ref or media.url))
        text = form.text
        return Message(
            id=f"whatsapp:{self.name}:{form.message_sid}",
            origin=Address(self.name, sender),
            sender=form.profile_name or sender,
            sender_id=sender,
            text=text,
            native_id=form.message_sid,
            attachments=tuple(attachments),
            reply_to=form.replied_sid or None,
            is_command=text.lstrip().startswith("/") and text.lstrip()[1:2].isalpha(),
            created=datetime.fromtimestamp(now, UTC),
            raw=dict(params),
        )

    def _notice(self, msg_id: str, chat: str, text: str, reply_to: str | None = None) -> Message:
        return Message(
            id=msg_id, origin=Address(self.name, chat), sender=f"WhatsApp ({self.name})",
            sender_id=f"gateway:{self.name}", text=text, reply_to=reply_to,
            tags=frozenset({"whatsapp-notice"}),
        )

    async def handle_status(self, request: web.Request) -> web.Response:
        form, _ = await self._verified_form(request, self.STATUS_PATH, StatusForm, "a status callback")
        if not await self.status_log.record(form):
            return twiml()
        self.ctx.emit(DeliveryStatus(gateway=self.name, native_id=form.message_sid,
                                     status=form.message_status, error=form.error_code))
        if form.failed:
            await self._on_failed(form)
        return twiml()

    async def _on_failed(self, form: StatusForm) -> None:
        try:
            to = normalise_number(form.to)
        except ValueError:
            to = form.to
        if form.error_code == "63016":
            await self.ctx.kv_delete(f"window:{to}")
        elif form.error_code == "21610":
            await self.set_opt_out(to, True, "twilio 21610")
        reason = failure_reason(form.error_code, form.error_message)
        origin_id = await self.ctx.lookup_origin(form.message_sid, to)
        message = Message(
            id=origin_id or f"whatsapp:{self.name}:sent:{form.message_sid}",
            origin=Address(self.name, to),
            sender="", text="", native_id=form.message_sid,
        )
        bindings = self.bindings_for(to)
        route = bindings[0].route if bindings else ""
        self.ctx.emit(DeliveryFailed(message=message, to=Address(self.name, to), route=route,
                                     error=f"{form.message_status}: {reason}", permanent=True))
        log.warning("whatsapp %s: delivery of %s to %s %s: %s", self.name, form.message_sid, mask_number(to),
                    form.message_status, reason)
        if any(binding_options(b.options).notify_status and b.inbound for b in bindings):
            await self.ctx.submit(self._notice(
                f"whatsapp:{self.name}:status:{form.message_sid}:{form.message_status}", to,
                f"⚠ delivery to {to} failed: {reason}", reply_to=form.message_sid))

    # -- files, inbound ---------------------------------------------------------------------------------------
    def _media_ref(self, url: str) -> str | None:
        """``twilio:<name>:<path>`` for a Twilio media URL, None for any other URL."""
        return media_ref(self.name, url)

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes of a ``twilio:<this gateway>:<path>`` media file, downloaded from Twilio with the
        account's credentials (its CDN hop gets none), at most ``max_bytes``. Gone (404), refused or
        too large: permanent; Twilio down, a timeout or a network error: transient."""
        path = media_path_of_ref(self.name, attachment.url or "")
        if path is None:
            raise DeliveryError("whatsapp: not a media file of this gateway", permanent=True)
        if max_bytes <= 0 or (attachment.size is not None and attachment.size > max_bytes):
            raise DeliveryError(f"whatsapp: file {attachment.name!r} is too large", permanent=True)
        if self._http is None or self._auth is None:
            raise DeliveryError("whatsapp gateway not started", permanent=False, retry_after=1.0)
        try:
            return await self._http.fetch_media(path, self._auth, max_bytes)
        except DeliveryError as exc:
            raise DeliveryError(f"whatsapp: file {attachment.name!r}: {self.scrub(str(exc))}",
                                permanent=exc.permanent, retry_after=exc.retry_after) from None
        except Exception as exc:  # noqa: BLE001 - aiohttp errors may carry the URL: never surface them
            raise DeliveryError(f"whatsapp: file {attachment.name!r}: twilio media unreachable "
                                f"({type(exc).__name__})", permanent=False) from None
