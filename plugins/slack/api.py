"""The Slack Web API for one gateway: the SDK's ``AsyncWebClient`` over the core's session, and
what its failures mean (permanent or not, bad credentials, Retry-After) as the core's errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from claudemesh_gateway import Binding, DeliveryError, GatewayState
from claudemesh_gateway.plugins.slack import mrkdwn
from claudemesh_gateway.plugins.slack.config import SlackConfig
from claudemesh_gateway.plugins.slack.history import HistoryRateLimited, HistoryRefused
from claudemesh_gateway.retry_after import parse_retry_after
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

__all__ = [
    "BAD_CREDENTIALS",
    "PERMANENT_ERRORS",
    "AuthFailed",
    "SlackApi",
    "delivery_error",
    "error_code",
    "make_client",
    "retry_after",
]

log = logging.getLogger(__name__)

# Web API errors that will not get better by retrying the same call.
PERMANENT_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "ekm_access_denied",
        "team_access_not_granted",
        "org_login_required",
        "not_in_channel",
        "channel_not_found",
        "is_archived",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "message_not_found",
        "cant_update_message",
        "cant_delete_message",
        "edit_window_closed",
        "invalid_arguments",
        "invalid_blocks",
        "invalid_thread_ts",
        "thread_locked",
        "compliance_exports_prevent_deletion",
        "duplicate_message_not_found",
        "channel_type_not_supported",
        # files.info, files.getUploadURLExternal, files.completeUploadExternal
        "file_not_found",
        "file_deleted",
        "file_type_not_allowed",
        "file_upload_size_restricted",
        "file_uploads_disabled",
        "file_uploads_except_images_disabled",
        "missing_argument",
        "snippet_too_large",
        "alt_txt_too_large",
        "invalid_channel",
        "posting_to_general_channel_denied",
    }
)
BAD_CREDENTIALS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
    }
)
# conversations.history errors that skip the channel for this catch-up (besides PERMANENT_ERRORS)
HISTORY_REFUSALS = frozenset({"invalid_cursor", "invalid_ts_oldest", "invalid_limit", "method_deprecated"})


class AuthFailed(Exception):
    """Slack refused a token at start (``error``: its error code, maybe prefixed by the token's name)."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


def make_client(config: SlackConfig, http: aiohttp.ClientSession | None) -> AsyncWebClient:
    """A client for the bot token on the core's session; the core retries, not the SDK."""
    return AsyncWebClient(
        token=config.bot_token.get_secret_value(),
        base_url=config.api_base,
        session=http,
        timeout=config.request_timeout,
        retry_handlers=[],
    )


class SlackApi:
    """The gateway's Web API client (``web``: None until :meth:`open`) and its calls. :meth:`call`
    and :meth:`history_page` report a refused bot token as ``bad_credentials`` (``set_state``)."""

    def __init__(self, name: str, config: SlackConfig, set_state: Callable[[GatewayState, str], None]) -> None:
        self.name = name
        self.config = config
        self.set_state = set_state
        self.web: AsyncWebClient | None = None

    def open(self, http: aiohttp.ClientSession) -> AsyncWebClient:
        self.web = make_client(self.config, http)
        return self.web

    async def setup_call(self, method: str, *, refused_prefix: str = "", **kwargs: Any) -> Any:
        """A call made while connecting: a refused token is :class:`AuthFailed` (``refused_prefix``
        before its code), any other failure a RuntimeError."""
        assert self.web is not None
        try:
            return await getattr(self.web, method)(**kwargs)
        except SlackApiError as exc:
            err = error_code(exc)
            if err in BAD_CREDENTIALS:
                raise AuthFailed(f"{refused_prefix}{err}") from None
            raise RuntimeError(f"{method.replace('_', '.')} failed: {err}") from None

    async def call(self, method: str, kwargs: Mapping[str, Any], *, what: str = "", scope_hint: str = "") -> Any:
        """One SDK call; every failure becomes a DeliveryError (permanent or not, retry_after)."""
        assert self.web is not None
        what = what or method.replace("_", ".", 1)
        try:
            return await getattr(self.web, method)(**kwargs)
        except SlackApiError as exc:
            err = error_code(exc)
            seconds = retry_after(exc)
            if seconds is not None:
                raise delivery_error(f"slack {what}: rate limited", retry_after=seconds, slack_error=err) from None
            if err in BAD_CREDENTIALS:
                self.set_state(GatewayState.BAD_CREDENTIALS, err)
            if err == "missing_scope" and scope_hint:
                err = f"missing_scope ({scope_hint})"
            permanent = err.split(" ", 1)[0] in PERMANENT_ERRORS
            status = exc.response.status_code if exc.response is not None else 0
            if status >= 500:
                permanent = False
            raise delivery_error(f"slack {what}: {err}", permanent=permanent, slack_error=err) from None
        except SlackRequestError as exc:
            # files_upload_v2: the POST of the bytes to the upload URL was not answered with 200. The
            # SDK's message quotes the response body; only the status leaves here. A new attempt asks
            # for a new upload URL, so anything but "too large" is worth retrying.
            status = _upload_status(str(exc))
            raise delivery_error(
                f"slack {what}: the upload was refused (HTTP {status or '?'})",
                permanent=status == 413,
                slack_error=f"http {status}",
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise delivery_error(f"slack {what}: {type(exc).__name__}") from None

    # -- name lookups (mrkdwn.NameResolver) ------------------------------------------------------
    async def user_name(self, uid: str) -> str | None:
        resp = await self._lookup("users_info", user=uid)
        if resp is None:
            return None
        user = resp.get("user") or {}
        profile = user.get("profile") or {}
        return (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
            or None
        )

    async def channel_name(self, cid: str) -> str | None:
        resp = await self._lookup("conversations_info", channel=cid)
        if resp is None:
            return None
        return (resp.get("channel") or {}).get("name") or None

    async def _lookup(self, method: str, **kwargs: Any) -> Any | None:
        if self.web is None:
            return None
        try:
            return await getattr(self.web, method)(**kwargs)
        except SlackApiError as exc:
            seconds = retry_after(exc)
            if seconds is not None:
                raise mrkdwn.LookupRateLimited(seconds) from None
            log.info("gateway %s: %s failed: %s", self.name, method, error_code(exc))
            return None

    # -- history catch-up ------------------------------------------------------------------------
    async def history_page(self, channel: str, **params: Any) -> Mapping[str, Any]:
        """One ``conversations.history`` call. Raises HistoryRateLimited (429), HistoryRefused
        (permanent for this channel, or bad credentials), anything else when it may get better."""
        if self.web is None:
            raise RuntimeError("not started")
        try:
            resp = await self.web.conversations_history(
                channel=channel, **{k: v for k, v in params.items() if v is not None}
            )
        except SlackApiError as exc:
            err = error_code(exc)
            seconds = retry_after(exc)
            if seconds is not None:
                raise HistoryRateLimited(seconds) from None
            if err in BAD_CREDENTIALS:
                self.set_state(GatewayState.BAD_CREDENTIALS, err)
                raise HistoryRefused(err, bad_credentials=True) from None
            status = exc.response.status_code if exc.response is not None else 0
            if status < 500 and (err in PERMANENT_ERRORS or err in HISTORY_REFUSALS):
                raise HistoryRefused(err) from None
            raise RuntimeError(f"slack conversations.history: {err}") from None
        data = resp.data
        return data if isinstance(data, Mapping) else {}

    # -- check -----------------------------------------------------------------------------------
    async def check_token(self, http: aiohttp.ClientSession | None, bindings: Sequence[Binding]) -> list[str]:
        """``auth.test``: the token, and the scopes Slack says it has (``x-oauth-scopes``) against
        what ``bindings`` and the config need."""
        cfg = self.config
        web = self.web or make_client(cfg, http)
        try:
            resp = await web.auth_test()
        except SlackApiError as exc:
            err = error_code(exc)
            if err in BAD_CREDENTIALS:
                return [f"{self.name}: Slack refused bot_token ({err})"]
            return [f"{self.name}: auth.test failed ({err})"]
        except Exception as exc:  # noqa: BLE001 - check reports, it does not raise
            return [f"{self.name}: Slack API unreachable ({type(exc).__name__})"]
        header = (resp.headers or {}).get("x-oauth-scopes")
        if header is None:
            return []  # Slack did not say; nothing more to tell
        have = {s.strip() for s in str(header).split(",") if s.strip()}
        inbound = any(b.inbound for b in bindings)
        outbound = any(b.outbound for b in bindings) or not bindings
        need: list[tuple[str, str]] = []
        if outbound:
            need.append(("chat:write", "it cannot post"))
        if inbound and not have & {"channels:history", "groups:history"}:
            need.append(("channels:history", "it receives no channel messages (groups:history for private ones)"))
        if inbound:
            need.append(("users:read", "senders show as U… ids"))
            need.append(("files:read", "files posted in Slack reach other platforms only as descriptions"))
        if outbound and cfg.upload_max_bytes:
            need.append(("files:write", "files from other platforms fail (or set upload_max_bytes = 0)"))
        if cfg.customize:
            need.append(("chat:write.customize", "customize = true cannot set the sender's name"))
        return [
            f"{self.name}: the bot token lacks the {scope} scope: {effect}" for scope, effect in need if scope not in have
        ]


def delivery_error(
    msg: str,
    *,
    permanent: bool = False,
    retry_after: float | None = None,
    slack_error: str = "",
) -> DeliveryError:
    """A DeliveryError that also carries Slack's error code as ``slack_error``."""
    exc = DeliveryError(msg, permanent=permanent, retry_after=retry_after)
    exc.slack_error = slack_error  # type: ignore[attr-defined]
    return exc


def error_code(exc: SlackApiError) -> str:
    """Slack's ``error`` of a failed call, else ``http <status>``."""
    resp = exc.response
    try:
        err = resp.get("error") if resp is not None else None
    except Exception:  # noqa: BLE001 - non-JSON body
        err = None
    if not err and resp is not None:
        err = f"http {resp.status_code}"
    return str(err or "unknown_error")


def retry_after(exc: SlackApiError) -> float | None:
    """Seconds to wait when ``exc`` is a rate limit (its Retry-After, else 1), None when it is not."""
    resp = exc.response
    if resp is None:
        return None
    headers = resp.headers or {}
    value = None
    for k, v in headers.items():
        if k.lower() == "retry-after":
            value = v[0] if isinstance(v, list | tuple) else v
    if resp.status_code == 429 or error_code(exc) == "ratelimited":
        seconds = parse_retry_after(value)  # the core's parser: seconds or an HTTP-date, capped
        return 1.0 if seconds is None else seconds
    return None


def _upload_status(message: str) -> int | None:
    m = re.search(r"status: (\d{3})", message)
    return int(m.group(1)) if m else None
