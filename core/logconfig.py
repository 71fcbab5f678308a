"""Logging setup (only ``cli.main`` calls :func:`configure_logging`) and secret redaction.

Redaction is mandatory, not cosmetic: Telegram API URLs embed the bot token
(``/bot<token>/method``) and aiohttp's ``ClientResponseError.__str__`` includes the
request URL, so a plain ``log.warning("send failed: %s", exc)`` would leak it. The
:class:`RedactionFilter` on every handler scrubs every ``SecretStr`` of the loaded
settings (gateway tables and mesh keys included) and every value registered at run
time through ``ctx.register_secret`` from the rendered message, its arguments and
the exception text.

Message bodies are never logged above DEBUG; code that logs a body does so with
``log.debug``. Third-party libraries log at ``[log] library_level`` (INFO) or above
whatever ``level`` says (:data:`LIBRARY_LOGGERS`): their DEBUG output holds SQL
arguments (aiosqlite prints every ``kv_set``, the session identity's secret key
included), request bodies and phone numbers.

Every record is one line: both formatters escape control characters (newlines,
carriage returns, escape sequences, Unicode line separators) in the message and in
every field, so a value from outside (a token's ``sub``, a chat name, a header) can
never forge a log line; a traceback keeps its own newlines.

JSON format (``[log] format = "json"``) emits one object per line with ``ts``,
``level``, ``logger``, ``msg`` and the structured ``extra`` keys (``gateway``,
``route``, ``message_id``, ``mesh``, ``lane``, ``destination``, ``event``) when a
record carries them.
"""

from __future__ import annotations

import json
import logging
import logging.config
import threading
import traceback
import urllib.parse
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "LIBRARY_LOGGERS",
    "MASK",
    "SECRETS",
    "STRUCTURED_FIELDS",
    "JsonFormatter",
    "RedactionFilter",
    "SecretRegistry",
    "configure_logging",
    "escape_control",
    "redact",
    "register_secret",
    "register_secrets",
    "url_password",
]

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mangle ordinary log text
STRUCTURED_FIELDS = ("gateway", "route", "message_id", "mesh", "lane", "destination", "event", "plugin")
#: loggers of the libraries we use, capped at ``[log] library_level`` (their DEBUG output carries SQL
#: arguments, request bodies and headers); ``claudemesh_gateway.*`` and plugins follow ``[log] level``
LIBRARY_LOGGERS = (
    "aiosqlite", "asyncio", "websockets", "aiohttp", "aiohttp_retry", "httpx", "httpcore", "h11", "urllib3",
    "requests", "charset_normalizer", "telegram", "slack_sdk", "slack_bolt", "slack", "twilio",
)
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# control characters -> visible escapes: C0 (newline, CR, ESC...), DEL, C1 (NEL...), Unicode line breaks
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {c: _NAMED.get(chr(c), f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROL}
_ESCAPES_KEEP_NEWLINE = {c: v for c, v in _ESCAPES.items() if c != 0x0A}
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}  # json.dumps leaves these


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``).
    ``keep_newlines``: for tracebacks, whose lines are their structure."""
    return text.translate(_ESCAPES_KEEP_NEWLINE if keep_newlines else _ESCAPES)


class SecretRegistry:
    """The set of strings to scrub. Thread-safe; longest values are replaced first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._ordered: tuple[str, ...] = ()

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SECRET_LEN:
            return
        variants = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
        with self._lock:
            if variants <= self._values:
                return
            self._values |= {v for v in variants if len(v) >= MIN_SECRET_LEN}
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._ordered = ()

    def __contains__(self, value: str) -> bool:
        return value in self._values

    def redact(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


SECRETS = SecretRegistry()  # process-wide, like logging itself


def url_password(text: str) -> str | None:
    """The password in a URL's userinfo (``scheme://user:password@host/...``), decoded, else None."""
    if "://" not in text or "@" not in text:
        return None
    try:
        password = urllib.parse.urlsplit(text.strip()).password
    except ValueError:  # not a URL after all (a bad port, brackets...)
        return None
    return urllib.parse.unquote(password) if password else None


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every log record from now on."""
    SECRETS.add(value)


def register_secrets(values: Iterable[str]) -> None:
    for value in values:
        SECRETS.add(value)


def redact(text: str) -> str:
    return SECRETS.redact(text)


class RedactionFilter(logging.Filter):
    """Scrubs registered secrets from message, args and exception/stack text. Never drops a record."""

    def __init__(self, registry: SecretRegistry | None = None) -> None:
        super().__init__()
        self.registry = registry or SECRETS

    def filter(self, record: logging.LogRecord) -> bool:
        reg = self.registry
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: keep the raw text
            message = str(record.msg)
        record.msg = reg.redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            if not record.exc_text:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = reg.redact(record.exc_text)
            # keep exc_info for handlers that inspect it, but the formatter uses exc_text
        elif record.exc_text:
            record.exc_text = reg.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = reg.redact(record.stack_info)
        for key in STRUCTURED_FIELDS:
            value = getattr(record, key, None)
            if isinstance(value, str):
                setattr(record, key, reg.redact(value))
        return True


class TextFormatter(logging.Formatter):
    """Plain text, one line per record (control characters escaped in the message, the logger name
    and every field); appends structured ``extra`` keys as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)  # other handlers see the record unchanged
        safe.msg, safe.args = escape_control(record.getMessage()), None
        safe.name = escape_control(record.name)
        safe.exc_info = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        safe.exc_text = escape_control(record.exc_text, keep_newlines=True) if record.exc_text else None
        safe.stack_info = escape_control(record.stack_info, keep_newlines=True) if record.stack_info else None
        text = super().format(safe)
        extras = [f"{k}={escape_control(str(getattr(record, k)))}" for k in STRUCTURED_FIELDS
                  if getattr(record, k, None) is not None]
        if extras:
            first, sep, rest = text.partition("\n")
            text = f"{first} [{' '.join(extras)}]{sep}{rest}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in STRUCTURED_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        # one line: json.dumps escapes C0 characters; DEL, C1 and U+2028/2029 get \\u escapes too
        return json.dumps(out, ensure_ascii=False).translate(_JSON_ESCAPES)


def library_cap(level: str, library_level: str) -> str:
    """The level third-party loggers get: the more severe of ``level`` and ``library_level``."""
    return max(level.upper(), library_level.upper(), key=_LEVELS.index)


def logging_dict(level: str = "INFO", fmt: str = "text", library_level: str = "INFO") -> dict[str, Any]:
    cap = library_cap(level, library_level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactionFilter}},
        "formatters": {
            "text": {"()": TextFormatter, "format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
            "json": {"()": JsonFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": fmt,
                "filters": ["redact"],
            },
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": cap} for name in LIBRARY_LOGGERS},
    }


def configure_logging(settings: Settings | None = None, *, level: str | None = None, fmt: str | None = None,
                      library_level: str | None = None) -> None:
    """Install handlers per ``[log]`` and register every secret in ``settings`` for redaction.
    Libraries (:data:`LIBRARY_LOGGERS`) log at ``[log] library_level`` (INFO) or above ``level``."""
    if settings is not None:
        from .settings import iter_secrets

        register_secrets(iter_secrets(settings))
        level = level or settings.log.level
        fmt = fmt or settings.log.format
        library_level = library_level or getattr(settings.log, "library_level", None)
    logging.config.dictConfig(logging_dict(level or "INFO", fmt or "text", library_level or "INFO"))
    logging.captureWarnings(True)
