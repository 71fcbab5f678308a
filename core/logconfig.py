"""Logging setup (only ``cli.main`` calls :func:`configure_logging`) and secret redaction.

Redaction is mandatory, not cosmetic: Telegram API URLs embed the bot token
(``/bot<token>/method``) and aiohttp's ``ClientResponseError.__str__`` includes the
request URL, so a plain ``log.warning("send failed: %s", exc)`` would leak it. The
:class:`RedactionFilter` on every handler scrubs every ``SecretStr`` of the loaded
settings (gateway tables and mesh keys included) and every value registered at run
time through ``ctx.register_secret`` from the rendered message, its arguments and
the exception text.

Message bodies are never logged above DEBUG; code that logs a body does so with
``log.debug``. JSON format (``[log] format = "json"``) emits one object per line
with ``ts``, ``level``, ``logger``, ``msg`` and the structured ``extra`` keys
(``gateway``, ``route``, ``message_id``, ``mesh``, ``lane``, ``destination``,
``event``) when a record carries them.
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
    "MASK",
    "SECRETS",
    "STRUCTURED_FIELDS",
    "JsonFormatter",
    "RedactionFilter",
    "SecretRegistry",
    "configure_logging",
    "redact",
    "register_secret",
    "register_secrets",
]

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mangle ordinary log text
STRUCTURED_FIELDS = ("gateway", "route", "message_id", "mesh", "lane", "destination", "event", "plugin")


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
    """Plain text; appends structured ``extra`` keys as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{k}={getattr(record, k)}" for k in STRUCTURED_FIELDS if getattr(record, k, None) is not None]
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
        return json.dumps(out, ensure_ascii=False)


def logging_dict(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
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
    }


def configure_logging(settings: Settings | None = None, *, level: str | None = None, fmt: str | None = None) -> None:
    """Install handlers per ``[log]`` and register every secret in ``settings`` for redaction."""
    if settings is not None:
        from .settings import iter_secrets

        register_secrets(iter_secrets(settings))
        level = level or settings.log.level
        fmt = fmt or settings.log.format
    logging.config.dictConfig(logging_dict(level or "INFO", fmt or "text"))
    logging.captureWarnings(True)
