"""WhatsApp through Twilio's official Programmable Messaging API.

- Ingress: Twilio POSTs form-encoded webhooks to ``/gateways/<name>/inbound``
  (a user wrote) and ``/gateways/<name>/status`` (status callback for a message
  we sent). The signature is verified first, over the configured ``public_url``.
- Egress: ``client.messages.create_async`` with the official ``twilio`` library
  over an aiohttp-based async HTTP client that shares the core's session.
- Files: bytes handed to ``send`` are held in memory for a while and offered to Twilio as
  ``<public_url>/gateways/<name>/media/<token>`` (``GET``/``HEAD``); inbound ``MediaUrl<n>``
  become ``twilio:<name>:<path>`` references read by ``fetch_attachment`` (see ``media.py``).
- State (``ctx.kv``): ``window:<whatsapp:+E164>`` = epoch seconds of the user's
  last inbound message (24-hour session window), ``optout:<whatsapp:+E164>`` =
  consent registry entry, ``status:recent`` = the last status callbacks,
  ``initiated`` = ``{number: epoch seconds}`` of the business-initiated (template)
  messages of the last 24 hours, for Meta's unique-recipient messaging limit.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextvars
import dataclasses
import json
import logging
import mimetypes
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import aiohttp
from aiohttp import web
from claudemesh_gateway import (
    Address,
    Attachment,
    Binding,
    BindingOptions,
    Capabilities,
    DeliveryError,
    DeliveryFailed,
    DeliveryStatus,
    Gateway,
    GatewayConfig,
    GatewayState,
    Message,
    MessageDropped,
    Outbound,
    RateLimit,
    SendResult,
)
from claudemesh_gateway.files import FetchPolicy, read_capped, safe_get
from claudemesh_gateway.plugins.whatsapp.media import (
    MEDIA_TOKEN_PATTERN,
    TWILIO_API,
    TWILIO_MEDIA_REDIRECT_HOSTS,
    MediaStore,
    is_media_path,
    media_path_of,
    scrub_media_tokens,
    served_content_type,
)
from claudemesh_gateway.plugins.whatsapp.signature import (
    SETTINGS_HEADER,
    SIGNATURE_HEADER,
    public_request_url,
    verify_signature,
)
from claudemesh_gateway.plugins.whatsapp.text import (
    check_template_variable,
    consent_keyword,
    failure_reason,
    mask_number,
    normalise_number,
    render_template_variables,
)
from claudemesh_gateway.plugins.whatsapp.wire import InboundForm, StatusForm
from claudemesh_gateway.retry_after import retry_after_header
from claudemesh_gateway.webhooks import MalformedHeader, header_value, parse_json_object, read_body
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client
from yarl import URL

__all__ = ["EMPTY_TWIML", "TwilioHttpClient", "WhatsAppBindingOptions", "WhatsAppConfig", "WhatsAppGateway"]

log = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MB = 1024 * 1024
MAX_REQUEST_BYTES = 1 * MB  # a Twilio webhook (form or JSON); aiohttp's default cap
DAY = 86400.0
MEDIA_NOT_YET = (0.5, 1.5)  # seconds: Twilio media can answer 404 for a moment right after the webhook
INITIATED_KEY = "initiated"
INITIATED_SAVE_EVERY = 60.0  # seconds between saves of refreshed (not new) entries

#: Response headers of the last Twilio call made *in this task* (for Retry-After).
_LAST_HEADERS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "whatsapp_twilio_last_headers", default=None
)


# -- configuration --------------------------------------------------------------------------------------------
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


# -- HTTP client ------------------------------------------------------------------------------------------------
class TwilioHttpClient(AsyncTwilioHttpClient):
    """twilio's async client on the core's shared aiohttp session.

    Differences from the stock client: no per-client session (the core's is
    shared and is never closed here), a bounded timeout, no request logging
    (bodies are message content), list values sent as repeated form fields
    (``MediaUrl``), and the response headers kept for ``Retry-After``.
    Tests subclass this and point :meth:`resolve` (``https://api.twilio.com``) at a fake; both
    the REST calls and media downloads go through it.
    """

    MAX_REDIRECTS: ClassVar[int] = 3

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float = 15.0) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        self.session = session

    async def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        url = self.resolve(url)
        fields: list[tuple[str, str]] = []
        for key, value in (data or {}).items():
            if isinstance(value, list | tuple):
                fields.extend((key, str(v)) for v in value)
            elif value is not None:
                fields.append((key, str(value)))
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = _basic_auth(auth[0], auth[1])
        async with self.session.request(
            method.upper(), url, params=params, data=fields or None, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout or 15.0),
            allow_redirects=allow_redirects,
        ) as resp:
            text = await resp.text()
            _LAST_HEADERS.set(dict(resp.headers))
            return TwilioResponse(resp.status, text, resp.headers)

    def resolve(self, url: str) -> str:
        """The URL actually requested for a Twilio API URL (the test seam)."""
        return url

    async def download(self, url: str, auth: tuple[str, str], max_bytes: int) -> bytes:
        """GET a Twilio media URL with HTTP basic auth and return its bytes, at most ``max_bytes``.

        Twilio answers with a redirect to its media CDN (a short-lived signed URL); that hop, and any
        after it, is requested *without* the credentials (they are for Twilio's API only, whatever the
        host). Raises :class:`DeliveryError`; its text never holds a URL or a credential."""
        headers = {"Authorization": _basic_auth(auth[0], auth[1])}
        per_call = self.timeout or 15.0
        timeout = aiohttp.ClientTimeout(total=max(60.0, 4 * per_call), sock_connect=per_call, sock_read=per_call)
        # Twilio's API host (or what resolve() maps it to) with the credentials; its redirect to the media
        # CDN (Twilio's or S3) without them; nothing else, nothing private (claudemesh_gateway.files)
        policy = FetchPolicy(hosts=(URL(TWILIO_API).host or "",), base=self.resolve(TWILIO_API + "/"),
                             redirect_hosts=TWILIO_MEDIA_REDIRECT_HOSTS, redirect_credentials=False,
                             max_redirects=self.MAX_REDIRECTS)
        async with safe_get(self.session, self.resolve(url), policy=policy, what="twilio media",
                            headers=headers, timeout=timeout) as resp:
            if resp.status == 404:
                raise _MediaNotFound("twilio media download failed (HTTP 404)", permanent=True)
            if resp.status != 200:
                transient = resp.status >= 500 or resp.status in (408, 429)
                raise DeliveryError(f"twilio media download failed (HTTP {resp.status})", permanent=not transient,
                                    retry_after=_header_seconds(resp.headers) if transient else None)
            return await read_capped(resp, max_bytes, "twilio media")

    async def close(self) -> None:  # the session belongs to the core
        return None


# -- the gateway ------------------------------------------------------------------------------------------------
class WhatsAppGateway(Gateway):
    kind: ClassVar[str] = "whatsapp"
    Config: ClassVar[type[GatewayConfig]] = WhatsAppConfig
    BindingOptions: ClassVar[type[BindingOptions]] = WhatsAppBindingOptions  # type: ignore[assignment]
    capabilities: ClassVar[Capabilities] = Capabilities(
        max_text=1600, replies=False, edits=False, deletes=False, threads=False,
        media=True, max_media_bytes=16 * MB, max_files=1, formatting="whatsapp",
    )
    #: media capability tokens (``/gateways/<name>/media/<token>``, in aiohttp's access log line of
    #: Twilio's fetch): the core's log redaction masks them in every record
    log_redactions: ClassVar[tuple[str, ...]] = (MEDIA_TOKEN_PATTERN,)
    #: The HTTP client class handed to twilio's ``Client`` (the test seam).
    http_client_class: ClassVar[type[TwilioHttpClient]] = TwilioHttpClient

    INBOUND_PATH: ClassVar[str] = "inbound"
    STATUS_PATH: ClassVar[str] = "status"
    MEDIA_PATH: ClassVar[str] = "media"
    #: the scheme of inbound media references: ``twilio:<gateway name>:<media path>``
    REF_SCHEME: ClassVar[str] = "twilio"
    RECENT_STATUS_KEEP: ClassVar[int] = 200

    config: WhatsAppConfig

    def __init__(self, name: str, config: GatewayConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self._client: Client | None = None
        self._http: TwilioHttpClient | None = None
        self._status_lock = asyncio.Lock()
        self._seen_status: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._initiated: dict[str, float] | None = None  # loaded from ctx.kv on first use
        self._initiated_lock = asyncio.Lock()
        self._initiated_saved = 0.0
        self._auth: tuple[str, str] | None = None  # REST / media credentials, set by start()
        cfg = self.config
        #: files served to Twilio on /gateways/<name>/media/<token> (see media.py)
        self.media = MediaStore(ctx, ttl=cfg.media_ttl, max_bytes=cfg.media_cache_bytes)
        # per instance: the core caps what it fetches for us at max_media_bytes
        self.capabilities = dataclasses.replace(  # type: ignore[misc]
            type(self).capabilities, media=cfg.max_media_bytes > 0, max_media_bytes=cfg.max_media_bytes)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            return
        cfg = self.config
        self.ctx.register_secret(cfg.auth_token.get_secret_value())
        for extra in (cfg.api_key_secret, cfg.webhook_shared_key):
            if extra is not None:
                self.ctx.register_secret(extra.get_secret_value())
        self._http = self.http_client_class(self.ctx.http, timeout=cfg.request_timeout)
        if cfg.api_key_sid and cfg.api_key_secret is not None:
            username, password = cfg.api_key_sid, cfg.api_key_secret.get_secret_value()
        else:
            username, password = cfg.account_sid, cfg.auth_token.get_secret_value()
        self._auth = (username, password)
        self._client = Client(username, password, cfg.account_sid, http_client=self._http)
        await self.media.purge()  # files offered before a restart: the expired ones leave the store
        detail = "" if self.public_url else "no public_url (here or in [server]): inbound webhooks are refused"
        self.set_state(GatewayState.CONNECTED, detail)
        log.info("whatsapp gateway %s ready (sender %s%s)", self.name,
                 mask_number(cfg.from_number) if cfg.from_number else cfg.messaging_service_sid,
                 ", sandbox" if cfg.sandbox else "")

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._client = None
        self._http = None
        if self._initiated is not None and self.config.daily_unique_users:
            async with self._initiated_lock:  # refreshed times not saved yet
                await self.ctx.kv_set(INITIATED_KEY, self._initiated)
        self.set_state(GatewayState.STOPPED)

    async def check(self) -> list[str]:
        warnings: list[str] = []
        cfg = self.config
        public_url = self.public_url
        if not public_url:
            warnings.append("public_url is not set (here or in [server]), so inbound messages and status "
                            "callbacks "
                            "cannot be verified and are refused (403)")
        elif not public_url.startswith("https://"):
            warnings.append("public_url is not https; Twilio requires HTTPS with a trusted "
                            "certificate in production")
        if cfg.sandbox and cfg.mps != 80.0:
            warnings.append("sandbox = true overrides mps (1 message / 3 s)")
        for b in self.ctx.bindings:
            opts = _opts(b.options)
            if opts.allow_numbers and b.address.chat not in opts.allow_numbers:
                warnings.append(f"route {b.route}: {mask_number(b.address.chat)} is not in its own allow_numbers, "
                                "so nothing passes this binding")
        return warnings

    # -- limits ------------------------------------------------------------------------------------------------
    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        scope = f"whatsapp:{self.name}:sender"
        if self.config.sandbox:
            return (RateLimit(scope=scope, per_second=1 / 3, burst=1.0),)
        return (RateLimit(scope=scope, per_second=self.config.mps, burst=max(1.0, self.config.mps)),)

    # -- kv helpers -----------------------------------------------------------------------------------------------
    async def is_opted_out(self, number: str) -> bool:
        return bool(await self.ctx.kv_get(f"optout:{number}"))

    async def set_opt_out(self, number: str, out: bool, why: str) -> None:
        if out:
            await self.ctx.kv_set(f"optout:{number}", {"at": time.time(), "why": why})
        else:
            await self.ctx.kv_delete(f"optout:{number}")

    async def last_inbound(self, number: str) -> float | None:
        value = await self.ctx.kv_get(f"window:{number}")
        return float(value) if isinstance(value, int | float) else None

    async def in_window(self, number: str, now: float | None = None) -> bool:
        last = await self.last_inbound(number)
        now = time.time() if now is None else now
        return last is not None and now - last < self.config.session_window_h * 3600

    def _bindings_for(self, chat: str, *, inbound: bool | None = None) -> list[Binding]:
        out = []
        for b in self.ctx.bindings:
            if inbound is True and not b.inbound:
                continue
            if inbound is False and not b.outbound:
                continue
            if b.address.chat != chat:
                continue
            opts = _opts(b.options)
            if opts.allow_numbers and chat not in opts.allow_numbers:
                continue
            out.append(b)
        return out

    # -- egress ------------------------------------------------------------------------------------------------
    async def send(self, out: Outbound) -> SendResult:
        if self._client is None:
            raise DeliveryError("whatsapp gateway not started", permanent=False, retry_after=1.0)
        try:
            to = normalise_number(out.to.chat)
        except ValueError:
            raise DeliveryError(f"not a WhatsApp address: {out.to.chat!r} (expected whatsapp:+E164)",
                                permanent=True) from None
        opts = _opts(out.options)
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
            kwargs["status_callback"] = public_request_url(self.public_url, self._path(self.STATUS_PATH))

        if not await self.in_window(to):
            if opts.outside_window == "template" and opts.template_content_sid:
                kwargs.update(self._template_kwargs(out, opts))
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
            kwargs.update(self._template_kwargs(out, opts))
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
        return public_request_url(self.public_url or "", self._path(f"{self.MEDIA_PATH}/{token}"))

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

    # -- files, inbound ---------------------------------------------------------------------------------------
    def _media_ref(self, url: str) -> str | None:
        """``twilio:<name>:<path>`` for a Twilio media URL, None for any other URL."""
        path = media_path_of(url)
        return f"{self.REF_SCHEME}:{self.name}:{path}" if path else None

    def _own_media_path(self, ref: str) -> str | None:
        prefix = f"{self.REF_SCHEME}:{self.name}:"
        if not ref.startswith(prefix):
            return None
        path = ref[len(prefix):]
        return path if is_media_path(path) else None

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes of a ``twilio:<this gateway>:<path>`` media file, downloaded from Twilio with the
        account's credentials (its CDN hop gets none), at most ``max_bytes``. Gone (404), refused or
        too large: permanent; Twilio down, a timeout or a network error: transient."""
        path = self._own_media_path(attachment.url or "")
        if path is None:
            raise DeliveryError("whatsapp: not a media file of this gateway", permanent=True)
        if max_bytes <= 0 or (attachment.size is not None and attachment.size > max_bytes):
            raise DeliveryError(f"whatsapp: file {attachment.name!r} is too large", permanent=True)
        if self._http is None or self._auth is None:
            raise DeliveryError("whatsapp gateway not started", permanent=False, retry_after=1.0)
        try:
            for delay in (*MEDIA_NOT_YET, None):
                try:
                    return await self._http.download(TWILIO_API + path, self._auth, max_bytes)
                except _MediaNotFound:
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)  # media can 404 for a moment right after the webhook
            raise AssertionError("unreachable")
        except DeliveryError as exc:
            raise DeliveryError(f"whatsapp: file {attachment.name!r}: {self._scrub(str(exc))}",
                                permanent=exc.permanent, retry_after=exc.retry_after) from None
        except Exception as exc:  # noqa: BLE001 - aiohttp errors may carry the URL: never surface them
            raise DeliveryError(f"whatsapp: file {attachment.name!r}: twilio media unreachable "
                                f"({type(exc).__name__})", permanent=False) from None

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
        added = await self._take_slot(to)
        try:
            msg = await self._create(kwargs, to, "template")
        except _WindowClosed:
            await self._give_back_slot(to, added)
            raise DeliveryError("template rejected outside the 24-hour window (Twilio 63016)",
                                permanent=True) from None
        except DeliveryError:
            await self._give_back_slot(to, added)  # Twilio took nothing, Meta counted nothing
            raise
        return self._sent(msg, to, "template", out)

    async def _book(self, now: float) -> dict[str, float]:
        if self._initiated is None:
            raw = await self.ctx.kv_get(INITIATED_KEY)
            self._initiated = {str(k): float(v) for k, v in raw.items()
                               if isinstance(v, int | float)} if isinstance(raw, dict) else {}
        for number in [n for n, at in self._initiated.items() if now - at >= DAY]:
            del self._initiated[number]
        return self._initiated

    async def initiated_count(self, now: float | None = None) -> int:
        """Unique users reached by business-initiated messages in the last 24 hours."""
        async with self._initiated_lock:
            return len(await self._book(time.time() if now is None else now))

    async def _take_slot(self, to: str) -> bool:
        """Record ``to`` as reached now; True when that took a new slot. Raises when none is free."""
        limit = self.config.daily_unique_users
        if not limit:
            return False  # no cap: nothing to count
        async with self._initiated_lock:
            now = time.time()
            book = await self._book(now)
            added = to not in book
            if added and len(book) >= limit:
                wait = max(min(book.values()) + DAY - now, 1.0)
                raise DeliveryError(
                    f"WhatsApp messaging limit: {limit} unique users already reached by business-initiated "
                    f"messages in the last 24 h (daily_unique_users); held, next slot in {wait / 60:.0f} min",
                    permanent=False, retry_after=wait)
            book[to] = now
            # a new user is written at once; a user already counted only refreshes its time, which
            # is saved at most once a minute (the whole book is one value: keep writes rare)
            if added or now - self._initiated_saved >= INITIATED_SAVE_EVERY:
                await self.ctx.kv_set(INITIATED_KEY, book)
                self._initiated_saved = now
            return added

    async def _give_back_slot(self, to: str, added: bool) -> None:
        if not added:
            return
        async with self._initiated_lock:
            book = await self._book(time.time())
            if book.pop(to, None) is not None:
                await self.ctx.kv_set(INITIATED_KEY, book)

    @staticmethod
    def _template_kwargs(out: Outbound, opts: WhatsAppBindingOptions) -> dict[str, Any]:
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

    async def _create(self, kwargs: dict[str, Any], to: str, mode: str) -> Any:
        """``messages.create_async``; Twilio errors become DeliveryError (63016 -> _WindowClosed)."""
        assert self._client is not None
        _LAST_HEADERS.set(None)
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
        text = self._scrub(str(raw_msg).replace("Unable to create record: ", ""))[:200]
        if code == "63016":
            await self.ctx.kv_delete(f"window:{to}")  # Twilio says the window is closed: believe it
            return _WindowClosed("outside WhatsApp 24-hour window (Twilio 63016)", permanent=True)
        if code == "21610":
            await self.set_opt_out(to, True, "twilio 21610")
            return DeliveryError("recipient opted out (STOP) (Twilio 21610)", permanent=True)
        if code == "63018":  # Meta's messaging limit (or the channel's rate) was hit anyway: hold, retry later
            return DeliveryError("WhatsApp messaging limit exceeded (Twilio 63018); held and retried in 5 min, "
                                 "check daily_unique_users against the sender's tier", permanent=False,
                                 retry_after=_retry_after(300.0))
        if status == 429 or code == "20429":
            return DeliveryError(f"rate limited by Twilio ({code or status})", permanent=False,
                                 retry_after=_retry_after(1.0))
        if status >= 500 or status == 0:
            return DeliveryError(f"Twilio server error {status} {code}".strip(), permanent=False,
                                 retry_after=_retry_after(None))
        if status in (401, 403) or code in ("20003", "20005"):
            self.set_state(GatewayState.BAD_CREDENTIALS, f"Twilio refused the credentials ({code or status})")
            return DeliveryError(f"Twilio refused the credentials ({code or status})", permanent=True)
        return DeliveryError(f"Twilio error {code or status}: {text}".rstrip(": "), permanent=True)

    def _scrub(self, text: str) -> str:
        text = scrub_media_tokens(text)  # Twilio may quote a MediaUrl back in an error
        for secret in (self.config.auth_token, self.config.api_key_secret, self.config.webhook_shared_key):
            if secret is not None and secret.get_secret_value():
                text = text.replace(secret.get_secret_value(), "***")
        return text

    # -- ingress -----------------------------------------------------------------------------------------------
    def web_routes(self) -> Sequence[web.RouteDef]:
        return (
            web.post(f"/{self.INBOUND_PATH}", self.handle_inbound),
            web.post(f"/{self.STATUS_PATH}", self.handle_status),
            web.get(f"/{self.MEDIA_PATH}/{{token}}", self.handle_media),  # HEAD too (aiohttp's allow_head)
        )

    @property
    def public_url(self) -> str | None:
        """The base URL Twilio calls: this table's ``public_url``, else ``[server] public_url``."""
        base = self.config.public_url or getattr(self.ctx, "public_url", None)
        return base.rstrip("/") if base else None

    def _path(self, leaf: str) -> str:
        return f"/gateways/{self.name}/{leaf}"

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
        url = public_request_url(public_url, self._path(leaf), request.rel_url.raw_query_string)
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

    async def handle_inbound(self, request: web.Request) -> web.Response:
        params = await self._verified_params(request, self.INBOUND_PATH)
        try:
            form = InboundForm.model_validate(params)
        except ValidationError:
            raise web.HTTPBadRequest(text="not a WhatsApp message webhook") from None
        if not form.from_.lower().startswith("whatsapp:"):
            # an SMS to a number that shares the webhook: not ours to relay as WhatsApp
            log.warning("whatsapp %s: non-WhatsApp message (%s) ignored", self.name, form.from_.partition(":")[0]
                        if ":" in form.from_ else "sms")
            return _twiml()
        try:
            sender = normalise_number(form.from_)
        except ValueError:
            raise web.HTTPBadRequest(text="not a WhatsApp sender address") from None
        now = time.time()
        # Any message from the user opens (refreshes) the 24-hour session window.
        await self.ctx.kv_set(f"window:{sender}", now)

        bindings = self._bindings_for(sender, inbound=True)
        consent = consent_keyword(form.body) if form.num_media == 0 else None
        if consent == "in" and form.body.strip().upper() == "YES" and not await self.is_opted_out(sender):
            consent = None  # a plain "yes" from someone not opted out is just an answer
        if consent is not None:
            await self.set_opt_out(sender, consent == "out", form.body.strip().upper())
            log.info("whatsapp %s: %s opted %s (%s)", self.name, mask_number(sender), consent,
                     form.body.strip().upper())
            if any(_opts(b.options).notify_status for b in bindings):
                state = "opted out of" if consent == "out" else "opted back in to"
                await self.ctx.submit(self._notice(
                    f"whatsapp:{self.name}:{form.message_sid}", sender,
                    f"ℹ {sender} {state} WhatsApp messages ({form.body.strip().upper()})"))
            return _twiml()

        message = self._to_message(form, sender, params, now)
        if not bindings:
            log.warning("whatsapp %s: message from unbound number %s dropped", self.name, mask_number(sender))
            self.ctx.emit(MessageDropped(message=message, reason="not_bound"))
            return _twiml()
        result = await self.ctx.submit(message)
        log.debug("whatsapp %s: inbound %s from %s -> %s", self.name, form.message_sid, mask_number(sender),
                  result.status)
        return _twiml()

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
        params = await self._verified_params(request, self.STATUS_PATH)
        try:
            form = StatusForm.model_validate(params)
        except ValidationError:
            raise web.HTTPBadRequest(text="not a status callback") from None
        key = (form.message_sid, form.message_status)
        if key in self._seen_status:
            return web.Response(status=200, text=EMPTY_TWIML, content_type="text/xml")
        self._seen_status[key] = None
        while len(self._seen_status) > 4096:
            self._seen_status.popitem(last=False)
        await self._record_status(form)
        self.ctx.emit(DeliveryStatus(gateway=self.name, native_id=form.message_sid,
                                     status=form.message_status, error=form.error_code))
        if form.failed:
            await self._on_failed(form)
        return _twiml()

    async def _record_status(self, form: StatusForm) -> None:
        async with self._status_lock:
            recent = await self.ctx.kv_get("status:recent") or []
            recent.append({"sid": form.message_sid, "status": form.message_status,
                           "error": form.error_code, "at": time.time()})
            await self.ctx.kv_set("status:recent", recent[-self.RECENT_STATUS_KEEP:])

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
        bindings = self._bindings_for(to)
        route = bindings[0].route if bindings else ""
        self.ctx.emit(DeliveryFailed(message=message, to=Address(self.name, to), route=route,
                                     error=f"{form.message_status}: {reason}", permanent=True))
        log.warning("whatsapp %s: delivery of %s to %s %s: %s", self.name, form.message_sid, mask_number(to),
                    form.message_status, reason)
        if any(_opts(b.options).notify_status and b.inbound for b in bindings):
            await self.ctx.submit(self._notice(
                f"whatsapp:{self.name}:status:{form.message_sid}:{form.message_status}", to,
                f"⚠ delivery to {to} failed: {reason}", reply_to=form.message_sid))


# -- helpers ----------------------------------------------------------------------------------------------------
class _MediaNotFound(DeliveryError):
    """Twilio answered 404 for a media file (internal: retried briefly, then permanent)."""


class _WindowClosed(DeliveryError):
    """Twilio 63016: free-form text outside the 24-hour window (internal; callers re-raise a DeliveryError)."""


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _twiml() -> web.Response:
    return web.Response(status=200, text=EMPTY_TWIML, content_type="text/xml")


def _opts(options: Any) -> WhatsAppBindingOptions:
    if isinstance(options, WhatsAppBindingOptions):
        return options
    if options is None:
        return WhatsAppBindingOptions()
    if hasattr(options, "model_dump"):
        options = options.model_dump()
    return WhatsAppBindingOptions.model_validate(dict(options))


def _retry_after(default: float | None) -> float | None:
    """Retry-After of the last Twilio call made in this task, else ``default``."""
    seconds = _header_seconds(_LAST_HEADERS.get() or {})
    return default if seconds is None else seconds


def _header_seconds(headers: Mapping[str, str]) -> float | None:
    return retry_after_header(headers)  # the core's parser: seconds or an HTTP-date, capped
