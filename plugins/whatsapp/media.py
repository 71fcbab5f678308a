"""Files both ways between WhatsApp (Twilio) and the core.

- Outbound: Twilio sends media only from a public URL it fetches itself (``MediaUrl``), so bytes
  handed to ``send`` are kept for a while in a :class:`MediaStore` and offered to Twilio as a
  capability URL ``<public_url>/gateways/<name>/media/<token>`` (the token is 256 random bits;
  whoever knows it may fetch that one file until it expires).
- Inbound: Twilio's ``MediaUrl<n>`` (``https://api.twilio.com/2010-04-01/Accounts/AC…/Messages/MM…/
  Media/ME…``) becomes a reference ``twilio:<gateway name>:<path>`` that only this gateway can read
  (with the account's credentials), see ``WhatsAppGateway.fetch_attachment``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import mimetypes
import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = [
    "TWILIO_API",
    "TWILIO_MEDIA_REDIRECT_HOSTS",
    "HostedMedia",
    "MediaStore",
    "install_access_log_filter",
    "is_media_path",
    "media_path_of",
    "scrub_media_tokens",
    "served_content_type",
]

#: where Twilio's media live (and the only host the account credentials are ever sent to)
TWILIO_API = "https://api.twilio.com"
#: where Twilio's media URL may redirect to (its media CDN, S3-backed), never with the credentials
TWILIO_MEDIA_REDIRECT_HOSTS = ("*.twilio.com", "*.twiliocdn.com", "*.amazonaws.com")

#: the path of one inbound media resource of an account
_MEDIA_PATH = re.compile(r"/2010-04-01/Accounts/AC[0-9A-Za-z]{8,64}/Messages/[0-9A-Za-z]{2,64}/Media/[0-9A-Za-z]{2,64}")
_TOKEN_IN_PATH = re.compile(r"(/gateways/[^/\s\"'?#]+/media/)[A-Za-z0-9_\-]+")
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


class MediaStore:
    """Bytes offered to Twilio by capability URL, in memory, bounded by age and total size.

    ``put`` returns a fresh token (``secrets.token_urlsafe(32)``), or None when the file cannot be
    held (empty, or larger than the whole store); to make room the oldest files go first. A file
    lives ``ttl`` seconds (Twilio fetches within seconds, but may retry). ``key`` (the outbound
    part's idempotency key) makes a retried send reuse the file already held instead of storing
    it twice. ``clock`` is monotonic seconds (tests inject their own).
    """

    def __init__(self, *, ttl: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: collections.OrderedDict[str, HostedMedia] = collections.OrderedDict()
        self._by_key: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # token -> key
        self.bytes = 0

    def __len__(self) -> int:
        self._expire(self.clock())
        return len(self._entries)

    def put(self, data: bytes, content_type: str, *, key: str | None = None) -> str | None:
        now = self.clock()
        self._expire(now)
        if key is not None:
            token = self._by_key.get(key)
            held = self._entries.get(token) if token is not None else None
            if token is not None and held is not None and held.data == data and held.content_type == content_type:
                self._entries[token] = dataclasses.replace(held, expires=now + self.ttl)
                self._entries.move_to_end(token)
                return token
        if not data or len(data) > self.max_bytes:
            return None
        while self._entries and self.bytes + len(data) > self.max_bytes:
            self._drop(next(iter(self._entries)))
        token = secrets.token_urlsafe(32)
        self._entries[token] = HostedMedia(data=data, content_type=content_type, expires=now + self.ttl)
        self.bytes += len(data)
        if key is not None:
            old = self._by_key.get(key)
            if old is not None:
                self._keys.pop(old, None)
            self._by_key[key] = token
            self._keys[token] = key
        return token

    def get(self, token: str) -> HostedMedia | None:
        self._expire(self.clock())
        return self._entries.get(token)

    def clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()
        self._keys.clear()
        self.bytes = 0

    def _expire(self, now: float) -> None:
        # entries are in insertion / refresh order, and every entry lives the same ttl
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            self._drop(token)

    def _drop(self, token: str) -> None:
        entry = self._entries.pop(token)
        self.bytes -= len(entry.data)
        key = self._keys.pop(token, None)
        if key is not None and self._by_key.get(key) == token:
            del self._by_key[key]


class _MediaTokenFilter(logging.Filter):
    """Keeps capability tokens of the media route out of aiohttp's access log (``"GET /gateways/wa/
    media/<token>"``); the rest of each line is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: leave the record alone
            return True
        if "/media/" in message:
            record.msg, record.args = scrub_media_tokens(message), None
        for key, value in list(vars(record).items()):
            if key != "msg" and isinstance(value, str) and "/media/" in value:
                setattr(record, key, scrub_media_tokens(value))
        return True


_ACCESS_FILTER = _MediaTokenFilter()


def install_access_log_filter(logger_name: str = "aiohttp.access") -> None:
    """Attach the token filter to the access logger (once per process)."""
    logger = logging.getLogger(logger_name)
    if _ACCESS_FILTER not in logger.filters:
        logger.addFilter(_ACCESS_FILTER)
