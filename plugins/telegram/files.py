"""Telegram files: references to a bot's files (``tgfile:<gateway>:<file_id>``), what a send uploads
(bytes, a file_id of this bot sent again as is, or a URL Telegram fetches itself), and downloads
via getFile."""

from __future__ import annotations

import urllib.parse
from typing import Any

import aiohttp
from claudemesh_gateway import Attachment, DeliveryError
from claudemesh_gateway.files import FetchPolicy, read_capped, safe_get
from claudemesh_gateway.plugins.telegram.config import MB, TelegramConfig
from claudemesh_gateway.plugins.telegram.transport import PLACEHOLDER
from claudemesh_gateway.plugins.telegram.wire import TgFile
from telegram import Bot, InputFile

__all__ = [
    "PHOTO_MAX_BYTES",
    "PHOTO_TYPES",
    "TELEGRAM_API_HOST",
    "can_upload",
    "download",
    "file_ref",
    "own_file_id",
    "safe_file_path",
    "upload",
]

PHOTO_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png"})
PHOTO_MAX_BYTES = 10 * MB
TELEGRAM_API_HOST = "api.telegram.org"  # the only host file downloads go to, besides the configured api_base


def file_ref(gateway: str, file_id: str) -> str:
    """An attachment's URL for a file of this bot: never the download URL, which holds the token."""
    return f"tgfile:{gateway}:{file_id}"


def own_file_id(gateway: str, url: str | None) -> str | None:
    """The file_id in a :func:`file_ref` of ``gateway``; None for any other URL."""
    prefix = file_ref(gateway, "")
    return url[len(prefix):] if url and url.startswith(prefix) else None


def can_upload(att: Attachment, gateway: str, max_bytes: int) -> bool:
    """Whether ``att`` can go as a file: bytes within ``max_bytes``, a file of this bot (reused by
    file_id) or a URL Telegram fetches itself."""
    if att.data is not None:
        return len(att.data) <= max_bytes
    return bool(att.url) and att.url.startswith((file_ref(gateway, ""), "https://", "http://"))


def upload(att: Attachment, gateway: str) -> tuple[Any, bool]:
    """What sendPhoto / sendDocument get for ``att`` (one :func:`can_upload` allows), and whether it
    goes as a photo (a JPEG or PNG within Telegram's photo limit)."""
    file_id = own_file_id(gateway, att.url)
    if att.data is not None:
        file: Any = InputFile(att.data, filename=att.name)
        size = len(att.data)
    elif file_id is not None:
        file = file_id  # same bot: the file_id is reusable, nothing to download
        size = att.size or 0
    else:
        file = att.url
        size = att.size or 0
    return file, att.content_type.lower() in PHOTO_TYPES and size <= PHOTO_MAX_BYTES


def safe_file_path(path: str) -> bool:
    """A ``getFile`` path that stays inside ``/file/bot<token>/``: relative, no ``..`` or empty segment,
    no backslash, query, fragment or control character."""
    if not path or path.startswith("/") or len(path) > 1024:
        return False
    if any(c in path for c in "\\?#%") or not path.isprintable():
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


async def download(bot: Bot, http: aiohttp.ClientSession, config: TelegramConfig, gateway: str,
                   att: Attachment, max_bytes: int | None) -> bytes:
    """Download a ``tgfile:<gateway>:<file_id>`` attachment (getFile + file download), capped at
    ``download_max_bytes`` (and ``max_bytes``). The download URL (it holds the token) never leaves
    here. A failed getFile raises its ``TelegramError``."""
    file_id = own_file_id(gateway, att.url)
    if file_id is None:
        raise DeliveryError("telegram: not a file of this bot", permanent=True)
    limit = config.download_max_bytes if max_bytes is None else min(max_bytes, config.download_max_bytes)
    if att.size is not None and att.size > limit:
        raise DeliveryError(f"telegram: file {att.name!r} is larger than download_max_bytes", permanent=True)
    f = TgFile.model_validate((await bot.get_file(file_id)).to_dict())
    if f.file_size is not None and f.file_size > limit:
        raise DeliveryError(f"telegram: file {att.name!r} is larger than download_max_bytes", permanent=True)
    path = f.file_path or ""
    marker = f"/file/bot{PLACEHOLDER}/"
    if marker in path:
        path = path.split(marker, 1)[1]
    if not safe_file_path(path):
        # a path from getFile goes after the token in the URL: never out of /file/bot<token>/
        raise DeliveryError(f"telegram: file {att.name!r} has an unusable file path", permanent=True)
    token = config.token.get_secret_value()
    url = f"{config.api_base}/file/bot{token}/{urllib.parse.quote(path, safe='/')}"
    # downloads go to Telegram's API host, or to the configured api_base (a local Bot API server);
    # nowhere a redirect may point
    policy = FetchPolicy(hosts=(TELEGRAM_API_HOST,), base=config.api_base)
    try:
        async with safe_get(http, url, policy=policy, what=f"telegram: file {att.name!r}") as resp:
            if resp.status != 200:
                raise DeliveryError(f"telegram: file download failed (HTTP {resp.status})",
                                    permanent=resp.status in (400, 404))
            return await read_capped(resp, limit, f"telegram: file {att.name!r}")
    except DeliveryError:
        raise
    except Exception as exc:  # noqa: BLE001 - aiohttp errors may carry the URL: never surface them
        raise DeliveryError(f"telegram: file download failed ({type(exc).__name__})") from None
