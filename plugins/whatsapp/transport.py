"""The HTTP client every Twilio call goes through: the REST API (via the ``twilio`` library) and media.

It runs on the core's shared aiohttp session and keeps each call's response headers, so the
caller can read Twilio's ``Retry-After`` (:func:`last_retry_after`, the core's parser).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
from collections.abc import Mapping
from typing import ClassVar

import aiohttp
from claudemesh_gateway import DeliveryError
from claudemesh_gateway.files import FetchPolicy, read_capped, safe_get
from claudemesh_gateway.plugins.whatsapp.media import TWILIO_API, TWILIO_MEDIA_REDIRECT_HOSTS
from claudemesh_gateway.retry_after import retry_after_header
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from yarl import URL

__all__ = ["MEDIA_NOT_YET", "TwilioHttpClient", "forget_last_call", "last_retry_after"]

MEDIA_NOT_YET = (0.5, 1.5)  # seconds: Twilio media can answer 404 for a moment right after the webhook

#: Response headers of the last Twilio call made *in this task* (for Retry-After).
_LAST_HEADERS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "whatsapp_twilio_last_headers", default=None
)


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

    async def fetch_media(self, path: str, auth: tuple[str, str], max_bytes: int) -> bytes:
        """:meth:`download` of Twilio's media file at ``path``, asked again after a short wait
        (:data:`MEDIA_NOT_YET`) while Twilio answers 404, as it may right after the webhook."""
        for delay in (*MEDIA_NOT_YET, None):
            try:
                return await self.download(TWILIO_API + path, auth, max_bytes)
            except _MediaNotFound:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

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
                                    retry_after=retry_after_header(resp.headers) if transient else None)
            return await read_capped(resp, max_bytes, "twilio media")

    async def close(self) -> None:  # the session belongs to the core
        return None


def last_retry_after(default: float | None) -> float | None:
    """Retry-After of the last Twilio call made in this task, else ``default``."""
    seconds = retry_after_header(_LAST_HEADERS.get() or {})
    return default if seconds is None else seconds


def forget_last_call() -> None:
    """Start a new call: no headers of an earlier one are read for its Retry-After."""
    _LAST_HEADERS.set(None)


class _MediaNotFound(DeliveryError):
    """Twilio answered 404 for a media file (retried briefly, then permanent)."""


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
