"""WhatsApp through Twilio's official Programmable Messaging API: the gateway and its wiring.

- Ingress (``ingress.py``): Twilio POSTs form-encoded webhooks to ``/gateways/<name>/inbound``
  (a user wrote) and ``/gateways/<name>/status`` (status callback for a message
  we sent). The signature is verified first, over the configured ``public_url`` (``signature.py``).
- Egress (``egress.py``): ``client.messages.create_async`` with the official ``twilio`` library
  over an aiohttp-based async HTTP client that shares the core's session (``transport.py``).
- Files: bytes handed to ``send`` are held in the gateway's store for a while and offered to Twilio as
  ``<public_url>/gateways/<name>/media/<token>`` (``GET``/``HEAD``); inbound ``MediaUrl<n>``
  become ``twilio:<name>:<path>`` references read by ``fetch_attachment`` (see ``media.py``).
- State (``ctx.kv``): ``window:<whatsapp:+E164>`` = epoch seconds of the user's
  last inbound message (24-hour session window), ``optout:<whatsapp:+E164>`` =
  consent registry entry, ``status:recent`` = the last status callbacks,
  ``initiated`` = ``{number: epoch seconds}`` of the business-initiated (template)
  messages of the last 24 hours, for Meta's unique-recipient messaging limit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from aiohttp import web
from claudemesh_gateway import (
    Address,
    Binding,
    BindingOptions,
    Capabilities,
    Gateway,
    GatewayConfig,
    GatewayState,
    RateLimit,
)
from claudemesh_gateway.plugins.whatsapp.config import (
    MB,
    WhatsAppBindingOptions,
    WhatsAppConfig,
    binding_options,
)
from claudemesh_gateway.plugins.whatsapp.egress import MessagingLimit, WhatsAppEgress
from claudemesh_gateway.plugins.whatsapp.ingress import StatusLog, WhatsAppIngress
from claudemesh_gateway.plugins.whatsapp.media import MEDIA_TOKEN_PATTERN, MediaStore, scrub_media_tokens
from claudemesh_gateway.plugins.whatsapp.text import mask_number
from claudemesh_gateway.plugins.whatsapp.transport import TwilioHttpClient
from twilio.rest import Client

__all__ = ["WhatsAppGateway"]

log = logging.getLogger(__name__)


class WhatsAppGateway(WhatsAppIngress, WhatsAppEgress, Gateway):
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
    RECENT_STATUS_KEEP: ClassVar[int] = 200

    config: WhatsAppConfig

    def __init__(self, name: str, config: GatewayConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self._client: Client | None = None
        self._http: TwilioHttpClient | None = None
        self._auth: tuple[str, str] | None = None  # REST / media credentials, set by start()
        cfg = self.config
        self.status_log = StatusLog(ctx, keep=self.RECENT_STATUS_KEEP)
        self.initiated = MessagingLimit(ctx, cfg.daily_unique_users)
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
        await self.initiated.save()  # refreshed times not saved yet
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
            opts = binding_options(b.options)
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

    # -- routes ------------------------------------------------------------------------------------------------
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

    def gateway_path(self, leaf: str) -> str:
        """The path of one of this gateway's routes (``/gateways/<name>/<leaf>``)."""
        return f"/gateways/{self.name}/{leaf}"

    def scrub(self, text: str) -> str:
        """``text`` (a Twilio error) without media tokens or this gateway's secrets."""
        text = scrub_media_tokens(text)  # Twilio may quote a MediaUrl back in an error
        for secret in (self.config.auth_token, self.config.api_key_secret, self.config.webhook_shared_key):
            if secret is not None and secret.get_secret_value():
                text = text.replace(secret.get_secret_value(), "***")
        return text

    # -- state: consent, 24-hour window, bindings --------------------------------------------------------------
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

    def bindings_for(self, chat: str, *, inbound: bool | None = None) -> list[Binding]:
        """The bindings to ``chat`` (inbound or outbound ones only, if asked) its ``allow_numbers`` let pass."""
        out = []
        for b in self.ctx.bindings:
            if inbound is True and not b.inbound:
                continue
            if inbound is False and not b.outbound:
                continue
            if b.address.chat != chat:
                continue
            opts = binding_options(b.options)
            if opts.allow_numbers and chat not in opts.allow_numbers:
                continue
            out.append(b)
        return out
