"""python-telegram-bot's ``Bot`` over the core's shared aiohttp session, without ever seeing the token.

Why a custom ``BaseRequest``:

* The core hands every gateway one shared ``aiohttp.ClientSession`` (``ctx.http``);
  PTB's default ``HTTPXRequest`` would open its own pool, and httpx logs every
  request URL at INFO -- and Bot API URLs embed the token (``/bot<token>/...``).
* PTB itself logs its base URL at DEBUG when a ``Bot`` is built.

So PTB is given a *placeholder* token. Its URLs, logs and exceptions only ever
contain the placeholder; :class:`AiohttpRequest` swaps the real token in at the
last moment, and wraps every transport error into a ``NetworkError`` /
``TimedOut`` whose text holds no URL (``from None``, so no chained traceback
with a URL is ever printed either).

Also here: ``raw_call`` (a Bot API call answered as plain JSON) and ``retry_after_seconds``
(a 429's wait within the core's bounds).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import warnings
from collections.abc import Callable
from typing import Any

import aiohttp
from claudemesh_gateway.retry_after import parse_retry_after
from telegram import Bot
from telegram.error import NetworkError, RetryAfter, TimedOut
from telegram.request import BaseRequest, RequestData

log = logging.getLogger(__name__)

__all__ = ["PLACEHOLDER", "AiohttpRequest", "make_bot", "protect_ptb_logs", "raw_call", "retry_after_seconds",
           "scrub"]

PLACEHOLDER = "0:TOKEN-REDACTED"


def scrub(text: str, *secrets: str) -> str:
    """Remove every secret from ``text`` (belt and braces for messages we build from errors)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class _ScrubFilter(logging.Filter):
    """PTB logs every call's parameters at DEBUG (``setWebhook`` carries ``secret_token``):
    scrub our secrets from records of PTB's own loggers, whatever logging config is active."""

    def __init__(self) -> None:
        super().__init__("claudemesh-telegram-scrub")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        if any(s in text for s in self.secrets):
            record.msg, record.args = scrub(text, *self.secrets), None
        return True


_FILTER = _ScrubFilter()
_PTB_LOGGERS = ("telegram", "telegram.Bot", "telegram.request.BaseRequest")


def protect_ptb_logs(*secrets: str) -> None:
    """Install (once) the scrubbing filter on PTB's loggers and add ``secrets`` to it."""
    _FILTER.secrets.update(s for s in secrets if s)
    for name in _PTB_LOGGERS:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)


class AiohttpRequest(BaseRequest):
    """A PTB request backend on a shared aiohttp session; substitutes the real token into URLs."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        token: str,
        *,
        read_timeout: float = 15.0,
        write_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._session = session
        self._token = token
        self._read = read_timeout
        self._write = write_timeout
        self._connect = connect_timeout

    @property
    def read_timeout(self) -> float | None:
        return self._read

    async def initialize(self) -> None:  # the session belongs to the core
        return None

    async def shutdown(self) -> None:
        return None

    def real_url(self, url: str) -> str:
        return url.replace(f"/bot{PLACEHOLDER}/", f"/bot{self._token}/", 1)

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        read = self._read if _is_default(read_timeout) else read_timeout
        connect = self._connect if _is_default(connect_timeout) else connect_timeout
        write = self._write if _is_default(write_timeout) else write_timeout
        total = None
        if read is not None:
            total = read + (connect or 0) + (write or 0)
        timeout = aiohttp.ClientTimeout(total=total, connect=connect, sock_read=read)
        kwargs: dict[str, Any] = {}
        if request_data is not None:
            if request_data.contains_files:
                form = aiohttp.FormData()
                for name, value in request_data.json_parameters.items():
                    form.add_field(name, value)
                for name, field in request_data.multipart_data.items():
                    filename, content, mimetype = field
                    if hasattr(content, "read"):
                        content = content.read()
                    form.add_field(name, content, filename=filename, content_type=mimetype)
                kwargs["data"] = form
            else:
                kwargs["data"] = json.dumps(request_data.parameters).encode()
                kwargs["headers"] = {"Content-Type": "application/json"}
        try:
            async with self._session().request(method, self.real_url(url), timeout=timeout, **kwargs) as resp:
                return resp.status, await resp.read()
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            raise TimedOut("Timed out talking to the Telegram Bot API") from None
        except aiohttp.ClientError as exc:
            raise NetworkError(f"Telegram Bot API unreachable ({type(exc).__name__})") from None
        except (OSError, RuntimeError) as exc:  # closed session, socket errors
            raise NetworkError(f"Telegram Bot API transport error ({type(exc).__name__})") from None


def _is_default(value: Any) -> bool:
    return value is BaseRequest.DEFAULT_NONE or type(value).__name__ == "DefaultValue"


def make_bot(session: Callable[[], aiohttp.ClientSession], token: str, api_base: str,
             *, poll_timeout: float = 25.0) -> tuple[Bot, AiohttpRequest]:
    """A PTB ``Bot`` on ``api_base`` that only knows the placeholder token."""
    base = api_base.rstrip("/")
    request = AiohttpRequest(session, token)
    updates_request = AiohttpRequest(session, token, read_timeout=10.0)
    bot = Bot(
        PLACEHOLDER,
        base_url=f"{base}/bot",
        base_file_url=f"{base}/file/bot",
        request=request,
        get_updates_request=updates_request,
    )
    return bot, request


async def raw_call(bot: Bot, method: str, *, read_timeout: float | None = None, **params: Any) -> Any:
    """A Bot API call returning plain JSON (no PTB object parsing).

    Used for getUpdates and getChat: we parse those with our own tolerant models
    (wire.py), so a field PTB's version expects but a Bot API server doesn't send
    (or the reverse) can never break ingress. PTB warns that a typed method exists;
    that is exactly what we are avoiding here.
    """
    kwargs: dict[str, Any] = {"api_kwargs": {k: v for k, v in params.items() if v is not None}}
    if read_timeout is not None:
        kwargs["read_timeout"] = read_timeout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return await bot.do_api_request(method, **kwargs)


def retry_after_seconds(exc: RetryAfter) -> float:
    """A 429's wait, within the core's bounds (never negative, capped)."""
    ra = exc.retry_after
    seconds = ra.total_seconds() if isinstance(ra, dt.timedelta) else float(ra)
    return parse_retry_after(str(seconds)) or 0.0
