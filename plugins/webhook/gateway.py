"""The generic ``webhook`` gateway: signed JSON over HTTP, both ways.

Outbound: each part is POSTed as JSON to the binding's ``url`` option (or the
instance ``url``), signed with ``secret`` (see :mod:`.signature`)::

    {"id", "route", "chat", "text", "sender", "sender_id", "origin", "reply_to",
     "attachments", "ts", "part", "parts", "idempotency_key"}

2xx is success (a JSON ``{"id": ...}`` answer becomes the native id, used to map
replies); 429 and 408/425/5xx are retried (``Retry-After`` honoured, only for that
chat); any other 4xx is permanent (dead letter).

Inbound: ``POST /gateways/<instance>/<chat>`` where ``<chat>`` is a binding's
``chat``, signed the same way; body ``{"id"?, "sender", "sender_id"?, "text",
"reply_to"?, "tags"?, "thread"?}``. Missing, bad or stale signature: 401 and
nothing is submitted. 200 only after the core has durably queued the message.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from claudemesh_gateway import (
    Address,
    BindingOptions,
    Capabilities,
    DeliveryError,
    Gateway,
    GatewayConfig,
    GatewayState,
    Message,
    Outbound,
    SendResult,
    StoreUnavailable,
)
from claudemesh_gateway.plugins.webhook.signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    signature_headers,
    verify,
)
from claudemesh_gateway.webhooks import MalformedHeader, header_value, read_body
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

__all__ = ["InboundPayload", "WebhookBindingOptions", "WebhookConfig", "WebhookGateway", "parse_retry_after"]

log = logging.getLogger(__name__)

_TAG = re.compile(r"[a-z0-9][a-z0-9:_./\-]{0,63}")


def _http_url(v: str | None) -> str | None:
    if v is None:
        return v
    v = v.strip()
    if not v.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return v


class WebhookConfig(GatewayConfig):
    """``[gateways.<name>]`` with ``type = "webhook"``."""

    url: str | None = None  # default outbound POST target (a binding's options.url overrides it)
    secret: SecretStr  # HMAC-SHA256 key, both directions
    tolerance_s: float = Field(300.0, gt=0, le=3600)  # accepted clock skew / replay window
    timeout: float = Field(10.0, gt=0, le=120)  # per outbound request
    max_body_bytes: int = Field(1_000_000, ge=1024, le=20_000_000)  # inbound request size cap

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _http_url(v)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        return v


class WebhookBindingOptions(BindingOptions):
    """``options = {url = "..."}`` on a webhook binding."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _http_url(v)


class InboundPayload(BaseModel):
    """The JSON body of an inbound webhook request."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, max_length=200)
    sender: str = Field(min_length=1, max_length=200)
    sender_id: str | None = Field(None, max_length=200)
    text: str = Field("", max_length=200_000)
    reply_to: str | None = Field(None, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=32)
    thread: str | None = Field(None, max_length=200)

    @field_validator("id", "reply_to", "thread", mode="before")
    @classmethod
    def _str_id(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), capped at one hour."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), 3600.0)


def _tags(values: Sequence[str]) -> frozenset[str]:
    out = set()
    for v in values:
        t = str(v).strip().lower().removeprefix("tag:")
        if _TAG.fullmatch(t):
            out.add(t)
    return frozenset(out)


class WebhookGateway(Gateway):
    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[GatewayConfig]] = WebhookConfig
    BindingOptions: ClassVar[type[BindingOptions]] = WebhookBindingOptions
    capabilities: ClassVar[Capabilities] = Capabilities(
        max_text=100_000, max_parts=1, replies=True, formatting="plain",
    )

    config: WebhookConfig

    def __init__(self, name: str, config: GatewayConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self._secret = self.config.secret.get_secret_value()
        self._stopping = False
        ctx.register_secret(self._secret)

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self.set_state(GatewayState.CONNECTED)

    async def stop(self) -> None:
        self._stopping = True
        self.set_state(GatewayState.STOPPED)

    async def check(self) -> list[str]:
        warnings = []
        for b in self.ctx.bindings:
            url = getattr(b.options, "url", None) if b.options is not None else None
            if b.outbound and not (url or self.config.url):
                warnings.append(f"route {b.route}: webhook binding {b.address.chat!r} sends but has no url "
                                f"(set gateways.{self.name}.url or options.url)")
        return warnings

    # -- egress -------------------------------------------------------------------------------------------------
    def _target(self, out: Outbound) -> str:
        url = out.options.get("url") if out.options else None
        url = url or self.config.url
        if not url:
            raise DeliveryError(f"webhook {self.name}: no url for chat {out.to.chat!r}", permanent=True)
        return str(url)

    def payload(self, out: Outbound) -> dict[str, Any]:
        m = out.message
        return {
            "id": m.id,
            "route": m.raw.get("route"),
            "chat": out.to.chat,
            "thread": out.to.thread,
            "text": out.text,
            "sender": m.sender,
            "sender_id": m.sender_id,
            "origin": {"gateway": m.origin.gateway, "chat": m.origin.chat, "thread": m.origin.thread},
            "reply_to": out.reply_to,
            "edit_of": out.edit_of,
            "tags": sorted(m.tags),
            "attachments": [
                {"name": a.name, "content_type": a.content_type, "size": a.size, "caption": a.caption}
                for a in (m.attachments if out.part == 1 else ())
            ],
            "ts": m.created.isoformat(),
            "part": out.part,
            "parts": out.parts,
            "idempotency_key": out.idempotency_key,
        }

    async def send(self, out: Outbound) -> SendResult:
        url = self._target(out)
        body = json.dumps(self.payload(out), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", **signature_headers(self._secret, body)}
        if out.idempotency_key:
            headers["Idempotency-Key"] = out.idempotency_key
        try:
            async with self.ctx.http.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                raw = await resp.read() if 200 <= status < 300 else b""
        except (aiohttp.ClientError, TimeoutError) as exc:
            # never the URL: it may carry a token in its query string
            raise DeliveryError(f"webhook {self.name}: {type(exc).__name__}") from None
        if 200 <= status < 300:
            return SendResult(native_ids=self._native_id(raw))
        if status == 429:
            raise DeliveryError(f"webhook {self.name}: HTTP 429 (throttled)", retry_after=retry_after)
        if status in (408, 425) or status >= 500:
            raise DeliveryError(f"webhook {self.name}: HTTP {status}", retry_after=retry_after)
        raise DeliveryError(f"webhook {self.name}: HTTP {status} (rejected)", permanent=True)

    @staticmethod
    def _native_id(raw: bytes) -> tuple[str, ...]:
        if not raw:
            return ()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return ()
        nid = data.get("id") if isinstance(data, dict) else None
        return (str(nid),) if isinstance(nid, (str, int)) and not isinstance(nid, bool) and str(nid) else ()

    # -- ingress --------------------------------------------------------------------------------------------------
    def web_routes(self) -> Sequence[web.RouteDef]:
        return [web.post("/{chat}", self._inbound)]

    async def _inbound(self, request: web.Request) -> web.Response:
        body = await read_body(request, max_bytes=self.config.max_body_bytes)  # 413 above the cap
        try:
            verify(self._secret, header_value(request.headers, TIMESTAMP_HEADER),
                   header_value(request.headers, SIGNATURE_HEADER), body, tolerance_s=self.config.tolerance_s)
        except (SignatureError, MalformedHeader) as exc:
            log.warning("webhook %s: rejected inbound request: %s", self.name, exc, extra={"gateway": self.name})
            return web.json_response({"error": "unauthorized"}, status=401)
        if self._stopping:
            return web.json_response({"error": "draining, retry later"}, status=503, headers={"Retry-After": "5"})
        chat = request.match_info["chat"]
        if not any(b.inbound and b.address.chat == chat for b in self.ctx.bindings):
            return web.json_response({"error": f"no inbound binding for chat {chat!r}"}, status=404)
        try:
            payload = InboundPayload.model_validate_json(body)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                               for e in exc.errors(include_url=False)[:5])
            return web.json_response({"error": f"invalid body: {errors}"}, status=400)
        ident = payload.id or hashlib.sha256(body).hexdigest()
        message = Message(
            id=f"webhook:{self.name}:{chat}:{ident}",
            origin=Address(self.name, chat, payload.thread),
            sender=payload.sender, sender_id=payload.sender_id or payload.sender, text=payload.text,
            native_id=payload.id, reply_to=payload.reply_to, tags=_tags(payload.tags),
        )
        try:
            result = await self.ctx.submit(message)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable:  # disk full or the like: the store logs it (rate-limited) and /-/ready says so
            return web.json_response({"error": "not queued, retry later"}, status=503, headers={"Retry-After": "5"})
        except Exception:  # not durable: the sender must retry
            log.exception("webhook %s: could not queue %s", self.name, message.id)
            return web.json_response({"error": "not queued, retry later"}, status=503, headers={"Retry-After": "5"})
        return web.json_response({"status": result.status, "id": message.id, "reason": result.reason,
                                  "destinations": result.destinations})

