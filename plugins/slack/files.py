"""Files both ways. Inbound files become ``slackfile:<gateway>:<file id>`` references, read back
with ``files.info`` + a download with the bot token (:meth:`SlackFiles.fetch`); outbound bytes
are uploaded with the SDK's ``files_upload_v2``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from claudemesh_gateway import Attachment, DeliveryError
from claudemesh_gateway.files import FetchPolicy, read_capped, safe_get
from claudemesh_gateway.plugins.slack.api import delivery_error, error_code
from claudemesh_gateway.plugins.slack.wire import SlackFile
from claudemesh_gateway.retry_after import parse_retry_after
from slack_sdk.errors import SlackApiError
from yarl import URL

if TYPE_CHECKING:
    from claudemesh_gateway.plugins.slack.gateway import SlackGateway

__all__ = ["FILE_REFUSALS", "FILE_SCHEME", "SlackFiles", "file_ref", "split_uploads"]

log = logging.getLogger(__name__)

# Slack refuses the file itself (the workspace's settings, its size): the message still goes, with
# the files described, instead of the whole message being dead-lettered
FILE_REFUSALS = frozenset(
    {
        "file_type_not_allowed",
        "file_upload_size_restricted",
        "file_uploads_disabled",
        "file_uploads_except_images_disabled",
        "snippet_too_large",
        "http 413",
    }
)
FILE_SCHEME = "slackfile"  # Attachment.url = "slackfile:<gateway name>:<file id>"
SLACK_FILE_HOSTS = ("slack.com", "*.slack.com")  # where url_private downloads (and the bot token) may go
UPLOAD_BATCH = 10  # files per files.completeUploadExternal call (one message)
FILES_READ_HINT = "reading Slack files needs the files:read scope"
FILES_WRITE_HINT = "uploading files needs the files:write scope"


def file_ref(gateway: str, f: SlackFile) -> str | None:
    """``slackfile:<gateway>:<file id>``: a reference only this gateway can read (no token, no URL)."""
    if not f.id or f.is_external or f.mode in ("tombstone", "hidden_by_limit", "external"):
        return None
    return f"{FILE_SCHEME}:{gateway}:{f.id}"


def split_uploads(attachments: Sequence[Attachment], cap: int) -> tuple[list[Attachment], list[Attachment]]:
    """(attachments with bytes to upload, attachments described in the text).

    Bytes are uploaded: the core fetched them, from another platform or from this workspace (a
    file relayed between two channels: ``capabilities.reuses_own_files`` is False, so the core
    reads it back through ``fetch_attachment`` inside its byte budget). A public http(s) URL
    without bytes, or bytes over ``cap``, are described."""
    files: list[Attachment] = []
    described: list[Attachment] = []
    for a in attachments:
        if a.data is not None:
            (files if 0 < len(a.data) <= cap else described).append(a)
        else:
            described.append(a)
    return files, described


class SlackFiles:
    """Uploads and downloads of one gateway."""

    def __init__(self, gateway: SlackGateway) -> None:
        self.gw = gateway
        self.warned_scopes: set[str] = set()

    async def upload(
        self, channel: str, thread: str | None, files: Sequence[Attachment], comment: str | None
    ) -> list[str]:
        """``files_upload_v2`` (files.getUploadURLExternal, POST of the bytes to the returned
        upload_url, files.completeUploadExternal), up to 10 files per message. Returns the ts of
        the file messages that are known (see :meth:`_shared_ts`)."""
        ids: list[str] = []
        for i in range(0, len(files), UPLOAD_BATCH):
            batch = files[i : i + UPLOAD_BATCH]
            kwargs: dict[str, Any] = {
                "file_uploads": [
                    {"file": a.data, "filename": a.name or "file", "title": a.name or "file"} for a in batch
                ],
                "channel": channel,
            }
            if thread:
                kwargs["thread_ts"] = thread
            if comment and i == 0:
                kwargs["initial_comment"] = comment
            resp = await self.gw.api.call("files_upload_v2", kwargs, what="files upload", scope_hint=FILES_WRITE_HINT)
            done = [f for f in (resp.get("files") or []) if isinstance(f, Mapping)]
            ts = _share_ts(done, channel) or await self._shared_ts(done, channel)
            if ts:
                ids.append(ts)
                self.gw.threads.remember(channel, ts, thread)
        return ids

    async def _shared_ts(self, files: Sequence[Mapping[str, Any]], channel: str) -> str | None:
        """Slack shares an uploaded file asynchronously: completeUploadExternal may return before
        the file message exists. Ask files.info after each of ``share_waits``; None if still unknown."""
        web = self.gw.api.web
        fid = next((str(f["id"]) for f in files if f.get("id")), None)
        if fid is None or web is None:
            return None
        for delay in self.gw.share_waits:
            await asyncio.sleep(delay)
            try:
                resp = await web.files_info(file=fid)
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                code = error_code(exc) if isinstance(exc, SlackApiError) else type(exc).__name__
                log.info("gateway %s: files.info for an uploaded file failed (%s)", self.gw.name, code)
                return None
            info = resp.get("file")
            ts = _share_ts([info], channel) if isinstance(info, Mapping) else None
            if ts:
                return ts
        log.info(
            "gateway %s: file %s in %s not shared yet; its message is not in the message map",
            self.gw.name, fid, channel,
        )
        return None

    @property
    def fetch_policy(self) -> FetchPolicy:
        """The bot token goes only to Slack's own hosts (https) or to the configured api_base origin,
        and a download follows a redirect only to those."""
        return FetchPolicy(hosts=SLACK_FILE_HOSTS, base=self.gw.config.api_base)

    def url_allowed(self, url: str) -> bool:
        try:
            return not self.fetch_policy.refusal(URL(url, encoded=True), redirect=False)
        except ValueError:
            return False

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes of a ``slackfile:<this gateway>:<file id>`` attachment: ``files.info`` for the
        download URL and size, then a GET with the bot token, streamed and cut at ``max_bytes``.

        The token is sent only to slack.com / *.slack.com (or the api_base host), never follows a
        redirect elsewhere, and no error text carries the token or the URL."""
        name = self.gw.name
        prefix = f"{FILE_SCHEME}:{name}:"
        ref = attachment.url or ""
        file_id = ref[len(prefix) :] if ref.startswith(prefix) else ""
        if not file_id:
            raise delivery_error(f"slack {name}: not a file of this gateway", permanent=True)
        label = f"slack file {file_id}"
        if attachment.size is not None and attachment.size > max_bytes:
            raise delivery_error(f"{label} is larger than {max_bytes} bytes", permanent=True)
        if self.gw.api.web is None:
            raise delivery_error(f"slack gateway {name} is not started")
        try:
            resp = await self.gw.api.call("files_info", {"file": file_id}, what="files.info", scope_hint=FILES_READ_HINT)
        except DeliveryError as exc:
            if getattr(exc, "slack_error", "").startswith("missing_scope") and "files:read" not in self.warned_scopes:
                self.warned_scopes.add("files:read")
                log.warning(
                    "gateway %s: the bot token lacks files:read; Slack files reach other platforms only as "
                    "descriptions (add the scope and reinstall the app)",
                    name,
                )
            raise
        info = SlackFile.model_validate(resp.get("file") or {})
        if info.mode in ("tombstone", "hidden_by_limit"):
            raise delivery_error(f"{label} is deleted or hidden ({info.mode})", permanent=True)
        if info.size is not None and info.size > max_bytes:
            raise delivery_error(f"{label} is larger than {max_bytes} bytes", permanent=True)
        url = info.url_private_download or info.url_private
        if info.is_external or not url:
            raise delivery_error(f"{label} is not stored on Slack", permanent=True)
        return await self._download(url, max_bytes, label, info.mimetype or attachment.content_type)

    async def _download(self, url: str, max_bytes: int, label: str, mimetype: str) -> bytes:
        cfg = self.gw.config
        token = cfg.bot_token.get_secret_value()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.request_timeout, sock_read=cfg.request_timeout)
        try:
            # every hop (the URL and at most 3 redirects) is checked before the token goes out
            async with safe_get(self.gw.ctx.http, url, policy=self.fetch_policy, what=label,
                                headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as resp:
                status = resp.status
                if status == 429 or status >= 500:
                    # transient; a vendor Retry-After (always for 429) paces the retry
                    retry = parse_retry_after(resp.headers.get("Retry-After"))
                    if retry is None and status == 429:
                        retry = 1.0
                    raise delivery_error(f"{label}: download failed (HTTP {status})", retry_after=retry)
                if status in (401, 403):
                    raise delivery_error(
                        f"{label}: download refused (HTTP {status}; {FILES_READ_HINT})", permanent=True
                    )
                if status != 200:
                    raise delivery_error(f"{label}: download failed (HTTP {status})", permanent=True)
                if resp.content_type == "text/html" and not mimetype.startswith("text/html"):
                    # what Slack serves a token that may not read the file: its login page
                    raise delivery_error(
                        f"{label}: Slack answered with a login page ({FILES_READ_HINT})", permanent=True
                    )
                return await read_capped(resp, max_bytes, label)
        except DeliveryError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # aiohttp's messages carry the URL: only the exception's type leaves here
            raise delivery_error(f"{label}: download failed ({type(exc).__name__})") from None


def _share_ts(files: Sequence[Any], channel: str) -> str | None:
    """The ts of the message that shares one of ``files`` in ``channel`` (``files[].shares``)."""
    for f in files:
        shares = f.get("shares") if isinstance(f, Mapping) else None
        if not isinstance(shares, Mapping):
            continue
        for kind in ("public", "private"):
            by_channel = shares.get(kind)
            entries = by_channel.get(channel) if isinstance(by_channel, Mapping) else None
            for entry in entries or ():
                if isinstance(entry, Mapping) and entry.get("ts"):
                    return str(entry["ts"])
    return None
