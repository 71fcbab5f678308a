"""Files both ways between WhatsApp (Twilio) and the core.

- Outbound: Twilio sends media only from a public URL it fetches itself (``MediaUrl``), so bytes
  handed to ``send`` are kept for a while in a :class:`MediaStore` (in the gateway's store, so they
  survive a restart) and offered to Twilio as a capability URL
  ``<public_url>/gateways/<name>/media/<token>`` (the token is 256 random bits; whoever knows it may
  fetch that one file until it expires).
- Inbound: Twilio's ``MediaUrl<n>`` (``https://api.twilio.com/2010-04-01/Accounts/AC…/Messages/MM…/
  Media/ME…``) becomes a reference ``twilio:<gateway name>:<path>`` that only this gateway can read
  (with the account's credentials), see ``WhatsAppGateway.fetch_attachment``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import mimetypes
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = [
    "MEDIA_TOKEN_PATTERN",
    "REF_SCHEME",
    "TOKEN_PATTERN",
    "TWILIO_API",
    "TWILIO_MEDIA_REDIRECT_HOSTS",
    "HostedMedia",
    "MediaKV",
    "MediaStore",
    "is_media_path",
    "media_path_of",
    "media_path_of_ref",
    "media_ref",
    "scrub_media_tokens",
    "served_content_type",
]

#: where Twilio's media live (and the only host the account credentials are ever sent to)
TWILIO_API = "https://api.twilio.com"
#: where Twilio's media URL may redirect to (its media CDN, S3-backed), never with the credentials
TWILIO_MEDIA_REDIRECT_HOSTS = ("*.twilio.com", "*.twiliocdn.com", "*.amazonaws.com")

#: the path of one inbound media resource of an account
_MEDIA_PATH = re.compile(r"/2010-04-01/Accounts/AC[0-9A-Za-z]{8,64}/Messages/[0-9A-Za-z]{2,64}/Media/[0-9A-Za-z]{2,64}")
#: a capability token in a media path: the gateway's ``log_redactions`` (the core masks it in every log line)
MEDIA_TOKEN_PATTERN = r"(/gateways/[^/\s\"'?#]+/media/)(?P<secret>[A-Za-z0-9_\-]+)"
_TOKEN_IN_PATH = re.compile(MEDIA_TOKEN_PATTERN)
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*")


def media_path_of(url: str) -> str | None:
    """The path of a Twilio media URL (``/2010-04-01/Accounts/…/Media/ME…``), or None when ``url`` is
    anything else (another host, credentials or a query in it, another resource)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme != "https" or parts.netloc != "api.twilio.com" or parts.query or parts.fragment:
        return None
    path = parts.path.rstrip("/")
    return path if _MEDIA_PATH.fullmatch(path) else None


def is_media_path(path: str) -> bool:
    return _MEDIA_PATH.fullmatch(path) is not None


#: the scheme of inbound media references: ``twilio:<gateway name>:<media path>``
REF_SCHEME = "twilio"


def media_ref(gateway: str, url: str) -> str | None:
    """``twilio:<gateway>:<path>`` for a Twilio media URL, None for any other URL."""
    path = media_path_of(url)
    return f"{REF_SCHEME}:{gateway}:{path}" if path else None


def media_path_of_ref(gateway: str, ref: str) -> str | None:
    """The media path in a ``twilio:<gateway>:<path>`` reference of that gateway, else None."""
    prefix = f"{REF_SCHEME}:{gateway}:"
    if not ref.startswith(prefix):
        return None
    path = ref[len(prefix):]
    return path if is_media_path(path) else None


def served_content_type(content_type: str, name: str = "") -> str:
    """The ``Content-Type`` to serve a file with: its own when well-formed and specific, else a guess
    from its name, else ``application/octet-stream`` (Twilio rejects a type that does not match)."""
    value = (content_type or "").strip()
    main = value.split(";", 1)[0].strip().lower()
    safe = _MIME.fullmatch(main) is not None and value.isprintable() and value.isascii()
    if safe and main != "application/octet-stream":
        return value
    guessed = mimetypes.guess_type(name)[0] if name else None
    return guessed or "application/octet-stream"


def scrub_media_tokens(text: str) -> str:
    """``…/gateways/<name>/media/<token>`` -> ``…/gateways/<name>/media/***``."""
    return _TOKEN_IN_PATH.sub(r"\1***", text) if "/media/" in text else text


@dataclasses.dataclass(frozen=True, slots=True)
class HostedMedia:
    data: bytes = dataclasses.field(repr=False)
    content_type: str
    expires: float


class MediaKV(Protocol):
    """The part of the gateway context the store needs (``GatewayContext.kv_*``)."""

    async def kv_get(self, key: str) -> Any | None: ...
    async def kv_set(self, key: str, value: Any) -> None: ...
    async def kv_delete(self, key: str) -> None: ...


#: a capability token as :func:`secrets.token_urlsafe` (32 bytes) makes it; anything else is never looked up
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
INDEX_KEY = "media-index"  # kv: [{"t": token, "exp": unix time, "n": size, "k": idempotency key}], oldest first
ENTRY_PREFIX = "media:"  # kv: media:<token> -> {"data": base64, "type": content type}


class MediaStore:
    """Bytes offered to Twilio by capability URL, persisted in the gateway's store (its kv), bounded by
    age and total size, so a URL handed to Twilio keeps working across a restart until it expires.

    ``put`` returns a fresh token (``secrets.token_urlsafe(32)``: 256 random bits), or None when the
    file cannot be held (empty, or larger than the whole store); to make room the oldest files go
    first. A file lives ``ttl`` seconds (Twilio fetches within seconds, but may retry); the deadline
    is wall-clock time, so it holds across restarts. ``key`` (the outbound part's idempotency key)
    makes a retried send reuse the file already held instead of storing it twice. ``get`` answers only
    for a well-formed token (:data:`TOKEN_PATTERN`; nothing else reaches the store). ``clock`` is Unix
    seconds (tests inject their own).
    """

    def __init__(self, kv: MediaKV, *, ttl: float, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.clock = clock
        self._index: list[dict[str, Any]] | None = None  # loaded from the kv on first use
        self._lock = asyncio.Lock()

    def _live(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [e for e in self._index or () if e["exp"] > now]

    def __len__(self) -> int:
        """Files held and not expired (as far as this process has loaded the index)."""
        return len(self._live())

    @property
    def bytes(self) -> int:
        return sum(e["n"] for e in self._live())

    async def _load(self) -> list[dict[str, Any]]:
        if self._index is None:
            raw = await self.kv.kv_get(INDEX_KEY)
            self._index = [
                {"t": e["t"], "exp": float(e["exp"]), "n": int(e["n"]), "k": e.get("k")}
                for e in (raw if isinstance(raw, list) else [])
                if isinstance(e, dict) and isinstance(e.get("t"), str) and TOKEN_PATTERN.fullmatch(e["t"])
                and isinstance(e.get("exp"), int | float) and isinstance(e.get("n"), int)
                and (e.get("k") is None or isinstance(e.get("k"), str))
            ]
        return self._index

    async def _drop(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            await self.kv.kv_delete(ENTRY_PREFIX + entry["t"])

    async def _save(self) -> None:
        await self.kv.kv_set(INDEX_KEY, self._index or [])

    async def _expire(self, index: list[dict[str, Any]]) -> bool:
        now = self.clock()
        gone = [e for e in index if e["exp"] <= now]
        if gone:
            index[:] = [e for e in index if e["exp"] > now]
            await self._drop(gone)
        return bool(gone)

    async def purge(self) -> int:
        """Delete the expired files from the store now; returns how many went."""
        async with self._lock:
            index = await self._load()
            before = len(index)
            if await self._expire(index):
                await self._save()
            return before - len(index)

    async def put(self, data: bytes, content_type: str, *, key: str | None = None) -> str | None:
        async with self._lock:
            index = await self._load()
            changed = await self._expire(index)
            now = self.clock()
            if key is not None:
                held = next((e for e in index if e["k"] == key), None)
                if held is not None and held["n"] == len(data):
                    entry = await self.kv.kv_get(ENTRY_PREFIX + held["t"])
                    if (isinstance(entry, dict) and entry.get("type") == content_type
                            and _decode(entry.get("data")) == data):
                        held["exp"] = now + self.ttl
                        index.remove(held)
                        index.append(held)
                        await self._save()
                        return held["t"]
            if not data or len(data) > self.max_bytes:
                if changed:
                    await self._save()
                return None
            evicted: list[dict[str, Any]] = []
            while index and sum(e["n"] for e in index) + len(data) > self.max_bytes:
                evicted.append(index.pop(0))
            token = secrets.token_urlsafe(32)
            await self.kv.kv_set(ENTRY_PREFIX + token, {"data": base64.b64encode(data).decode("ascii"),
                                                        "type": content_type})
            if key is not None:
                for e in index:
                    if e["k"] == key:
                        e["k"] = None  # a newer file for the same part: the old one is no longer reused
            index.append({"t": token, "exp": now + self.ttl, "n": len(data), "k": key})
            await self._save()
            await self._drop(evicted)
            return token

    async def get(self, token: str) -> HostedMedia | None:
        if not TOKEN_PATTERN.fullmatch(token):
            return None
        async with self._lock:
            index = await self._load()
            if await self._expire(index):
                await self._save()
            entry = next((e for e in index if e["t"] == token), None)
        if entry is None:
            return None
        stored = await self.kv.kv_get(ENTRY_PREFIX + token)
        data = _decode(stored.get("data")) if isinstance(stored, dict) else None
        if data is None or not isinstance(stored.get("type"), str):
            return None
        return HostedMedia(data=data, content_type=stored["type"], expires=entry["exp"])


def _decode(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None

