"""Slack gateway: Socket Mode (default) or Events API ingress, Web API egress.

Translation only. Routing, retries, rate limiting, splitting and attribution are the
core's; this module turns Slack events into :class:`Message` and :class:`Outbound`
into ``chat.postMessage`` / ``chat.update`` / ``chat.delete``, and files both ways:
inbound files become ``slackfile:<gateway>:<file id>`` references read back with
``files.info`` + a download with the bot token (:meth:`SlackGateway.fetch_attachment`),
outbound bytes are uploaded with the SDK's ``files_upload_v2``.

Acknowledgement policy (both modes): an event is acknowledged (socket envelope ack or
HTTP 200) only *after* ``ctx.submit`` has returned, i.e. after the core's durable
commit. Name lookups are bounded (``lookup_timeout``) so this fits Slack's 3 s window.
A late or missing ack only makes Slack redeliver, and a redelivery carries the same
message ``ts`` and therefore the same :attr:`Message.id`, which the core deduplicates.
Acking first would lose the event if the process died before the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

import aiohttp
from aiohttp import web
from claudemesh_gateway import (
    Address,
    Attachment,
    BindingOptions,
    Capabilities,
    DeliveryError,
    Gateway,
    GatewayConfig,
    GatewayState,
    Message,
    Outbound,
    RateLimit,
    SendResult,
    StartupError,
)
from claudemesh_gateway.files import FetchPolicy, read_capped, safe_get
from claudemesh_gateway.plugins.slack import mrkdwn
from claudemesh_gateway.plugins.slack.history import CURSORS_KEY as HISTORY_CURSORS_KEY
from claudemesh_gateway.plugins.slack.history import HistoryCatchup, HistoryRateLimited, HistoryRefused
from claudemesh_gateway.plugins.slack.signature import SignatureVerifier
from claudemesh_gateway.plugins.slack.wire import EventCallback, MessageEvent, SlackFile, SlashCommand
from claudemesh_gateway.retry_after import parse_retry_after
from claudemesh_gateway.webhooks import parse_json_object, read_body
from pydantic import ConfigDict, Field, SecretStr, ValidationError
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from yarl import URL

__all__ = ["RateConfig", "SlackBindingOptions", "SlackConfig", "SlackGateway"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # an Events API or slash command request (aiohttp's default cap)

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
# Message subtypes that carry a person's words; everything else (joins, topic changes,
# bot_message, ...) is not relayed.
RELAYED_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
# conversations.history errors that skip the channel for this catch-up (besides PERMANENT_ERRORS)
HISTORY_REFUSALS = frozenset({"invalid_cursor", "invalid_ts_oldest", "invalid_limit", "method_deprecated"})
PARENTS_KEY = "thread_parents"  # kv: [[channel, reply ts, parent ts], ...], newest last
PARENTS_SAVED = 5000
TEXT_FIRST_KEY = "text_first"  # kv: text_first:<idempotency key> -> ts of a text posted ahead of its files
FILE_SCHEME = "slackfile"  # Attachment.url = "slackfile:<gateway name>:<file id>"
SLACK_FILE_HOSTS = ("slack.com", "*.slack.com")  # where url_private downloads (and the bot token) may go
UPLOAD_BATCH = 10  # files per files.completeUploadExternal call (one message)
FILES_READ_HINT = "reading Slack files needs the files:read scope"
FILES_WRITE_HINT = "uploading files needs the files:write scope"


STANDBY_DETAIL = "standby: another replica holds the Socket Mode connection"

class RateConfig(GatewayConfig):
    """chat.postMessage "special" tier: ~1 message/s per channel with short bursts, plus a
    workspace-wide limit (several hundred per minute)."""

    per_channel_per_s: float = Field(1.0, gt=0)
    per_channel_burst: float = Field(3.0, ge=1)
    workspace_per_s: float = Field(4.0, gt=0)
    workspace_burst: float = Field(20.0, ge=1)


class SlackConfig(GatewayConfig):
    """``[gateways.<name>]`` with ``type = "slack"``. One table per workspace/app."""

    model_config = ConfigDict(hide_input_in_errors=True)  # never echo tokens in config errors

    bot_token: SecretStr  # xoxb-...
    app_token: SecretStr | None = None  # xapp-... (mode = "socket"; scope connections:write)
    signing_secret: SecretStr | None = None  # mode = "events" (and slash commands)
    mode: Literal["socket", "events"] = "socket"
    api_base: str = "https://slack.com/api/"
    customize: bool = False  # per-message username/icon_url (scope chat:write.customize)
    icon_url: str | None = None  # default avatar when customize = true
    max_text: int = Field(4000, ge=200, le=40000)
    ignore_bots: bool = True  # drop messages posted by any bot/app (our own are always dropped)
    unfurl: bool = False  # let Slack unfurl links in relayed messages
    lookup_timeout: float = Field(1.0, gt=0, le=2.5)  # name lookups per inbound event, seconds
    name_cache_ttl: float = Field(3600.0, ge=0)
    request_timeout: int = Field(10, ge=1, le=60)
    ping_interval: float = Field(5.0, gt=0)  # Socket Mode keep-alive
    # catch-up after downtime from conversations.history (opt-in: Slack's limits for new
    # non-Marketplace apps are ~1 request/min with <= 15 messages)
    history_catchup: bool = False
    history_rate_per_min: float = Field(1.0, gt=0)  # conversations.history calls, all channels together
    history_page_limit: int = Field(15, ge=1, le=200)  # messages per call
    history_max_age: float = Field(86400.0, gt=0)  # seconds: never fetch older messages
    # files: largest file uploaded to Slack (files_upload_v2, scope files:write); 0 = never upload,
    # files are described in the text. Slack itself takes up to 1 GB.
    upload_max_bytes: int = Field(50 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)
    # the text goes with the upload as its initial_comment when at most this long (and
    # customize = false); otherwise it is posted as its own message first, then the files
    upload_comment_max: int = Field(4000, ge=0, le=40000)
    rate: RateConfig = RateConfig()


class SlackBindingOptions(BindingOptions):
    """``options = {...}`` on a route binding to a Slack channel."""

    thread_ts: str | None = None  # post all mesh traffic into this thread of the channel
    allow_users: tuple[str, ...] = ()  # Slack user ids relayed from this channel (empty: all)
    icon_url: str | None = None  # avatar for this binding (customize = true)
    allow_mass_mentions: bool = False  # let "@here"/"@channel"/"@everyone" from the mesh ping


class _AuthFailed(Exception):
    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


class _SocketClient(SocketModeClient):
    """The SDK's Socket Mode client, except that a refused app token ends it.

    On every reconnect the SDK asks ``apps.connections.open`` for a fresh URL and, when
    that fails, logs and tries again forever, so an app token revoked after start would
    spin silently. Here a credentials error closes the client and tells the gateway,
    which reports ``bad_credentials`` the same way a refused token at start does."""

    def __init__(self, *args: Any, on_refused: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_refused = on_refused

    async def issue_new_wss_url(self) -> str:
        try:
            return await super().issue_new_wss_url()
        except SlackApiError as exc:
            err = _error_code(exc)
            if err in BAD_CREDENTIALS:
                self.closed = True  # stops connect() and the session monitor from retrying
                self.auto_reconnect_enabled = False
                self._on_refused(f"app_token: {err}")
            raise


class SlackGateway(Gateway):
    kind = "slack"
    Config = SlackConfig
    BindingOptions = SlackBindingOptions
    capabilities = Capabilities(
        max_text=4000,
        threads=True,
        replies=True,
        edits=True,
        deletes=True,
        media=True,
        max_media_bytes=50 * 1024 * 1024,
        formatting="mrkdwn",
    )
    #: after an upload whose file message Slack has not shared yet: files.info after these waits
    share_waits: tuple[float, ...] = (0.5, 1.0)
    #: several replicas: how often the Socket Mode lease is checked (see _socket_mode)
    standby_interval: float = 5.0

    config: SlackConfig

    def __init__(self, name: str, config: SlackConfig, ctx: Any) -> None:  # ctx: GatewayContext
        super().__init__(name, config, ctx)
        self.capabilities = Capabilities(
            max_text=config.max_text,
            threads=True,
            replies=True,
            edits=True,
            deletes=True,
            media=config.upload_max_bytes > 0,
            max_media_bytes=config.upload_max_bytes,
            formatting="mrkdwn",
        )
        for secret in (config.bot_token, config.app_token, config.signing_secret):
            if secret is not None:
                ctx.register_secret(secret.get_secret_value())
        self._web: AsyncWebClient | None = None
        self._socket: SocketModeClient | None = None
        self._verifier = (
            SignatureVerifier(config.signing_secret.get_secret_value()) if config.signing_secret else None
        )
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self.resolver = mrkdwn.NameResolver(self._fetch_user, self._fetch_channel, ttl=config.name_cache_ttl)
        self._parents: OrderedDict[tuple[str, str], str] = OrderedDict()  # (channel, ts) -> thread parent
        self._recent: OrderedDict[str, None] = OrderedDict()  # event ids already submitted
        self._tasks: set[asyncio.Task[Any]] = set()
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._started = False
        self._hellos = 0  # Socket Mode hellos since start: every one after the first is a reconnect
        self.app_id: str | None = None  # from the socket hello or events; recognises our own posts
        self._history = HistoryCatchup(self) if config.history_catchup else None
        self._warned_scopes: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        try:
            await self._start()
        except StartupError:
            self._started = False
            raise

    async def _start(self) -> None:
        self._started = True
        self._hellos = 0
        cfg = self.config
        await self._load_parents()
        if self._history is not None:
            await self._history.load()
        else:
            with contextlib.suppress(Exception):  # off forgets: a later enable starts at "now"
                await self.ctx.kv_delete(HISTORY_CURSORS_KEY)
        if not cfg.bot_token.get_secret_value().startswith("xoxb-"):
            raise StartupError(f"gateway {self.name}: bot_token must be a bot token (xoxb-...)")
        if cfg.mode == "socket" and (
            cfg.app_token is None or not cfg.app_token.get_secret_value().startswith("xapp-")
        ):
            raise StartupError(
                f'gateway {self.name}: mode = "socket" needs app_token (xapp-..., connections:write)'
            )
        if cfg.mode == "events" and self._verifier is None:
            raise StartupError(f'gateway {self.name}: mode = "events" needs signing_secret')
        self.set_state(GatewayState.STARTING)
        self._web = AsyncWebClient(
            token=cfg.bot_token.get_secret_value(),
            base_url=cfg.api_base,
            session=self.ctx.http,
            timeout=cfg.request_timeout,
            retry_handlers=[],  # the core retries, not the SDK
        )
        try:
            await self._auth()
            if cfg.mode == "socket":
                await self._socket_mode()
            else:
                self._events_connected()
        except _AuthFailed as exc:
            self.set_state(GatewayState.BAD_CREDENTIALS, exc.error)
            raise StartupError(f"gateway {self.name}: Slack refused the token ({exc.error})") from None
        except Exception as exc:  # noqa: BLE001 - network trouble at boot: keep trying in the background
            self.set_state(GatewayState.TRANSIENT_DISCONNECT, type(exc).__name__)
            self._spawn(self._bootstrap_loop(), "bootstrap")

    async def _bootstrap_loop(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                await self._auth()
                if self.config.mode == "socket":
                    await self._socket_mode()
                else:
                    self._events_connected()
                return
            except _AuthFailed as exc:
                self.set_state(GatewayState.BAD_CREDENTIALS, exc.error)
                log.error("gateway %s: Slack refused the token (%s); not retrying", self.name, exc.error)
                return
            except Exception as exc:  # noqa: BLE001
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, type(exc).__name__)
                delay = min(delay * 2, 60.0)

    def _events_connected(self) -> None:
        self.set_state(GatewayState.CONNECTED, "events api")
        if self._history is not None:
            self._history.connected(reconnect=False)

    async def _auth(self) -> None:
        assert self._web is not None
        try:
            resp = await self._web.auth_test()
        except SlackApiError as exc:
            err = _error_code(exc)
            if err in BAD_CREDENTIALS:
                raise _AuthFailed(err) from None
            raise RuntimeError(f"auth.test failed: {err}") from None
        self.bot_user_id = resp.get("user_id")
        self.bot_id = resp.get("bot_id")
        self.team_id = resp.get("team_id")
        log.info(
            "gateway %s: authenticated to Slack team %s as %s", self.name, self.team_id, self.bot_user_id
        )

    async def _socket_mode(self) -> None:
        """Socket Mode under this gateway's "socket" lease: with several replicas only the holder
        keeps a socket open (the others stand by, healthy, and take over when it goes), so no event
        is read by two replicas. With one process the lease is always ours."""
        if await self._socket_lease():
            await self._open_socket()
        else:
            self.set_state(GatewayState.CONNECTED, STANDBY_DETAIL)
        self._spawn(self._socket_lease_loop(), "socket-lease")

    async def _socket_lease(self) -> bool:
        exclusive = getattr(self.ctx, "exclusive", None)  # contexts from before leases existed
        if exclusive is None:
            return True
        try:
            return await exclusive("socket")
        except Exception as exc:  # noqa: BLE001 - the store is down: do not read events blind
            log.warning("gateway %s: cannot check the Socket Mode lease (%s)", self.name, type(exc).__name__)
            return False

    async def _socket_lease_loop(self) -> None:
        while self._started:
            await asyncio.sleep(self.standby_interval)
            held = await self._socket_lease()
            if held and self._socket is None:
                log.info("gateway %s: taking over the Socket Mode connection", self.name)
                self.set_state(GatewayState.STARTING, "taking over Socket Mode from another replica")
                try:
                    await self._open_socket()
                except Exception as exc:  # noqa: BLE001 - try again next round
                    self.set_state(GatewayState.TRANSIENT_DISCONNECT, type(exc).__name__)
            elif not held and self._socket is not None:
                log.warning("gateway %s: lost the Socket Mode lease; closing the socket", self.name)
                socket, self._socket = self._socket, None
                for task in list(self._tasks):
                    if task.get_name().endswith(":connect"):
                        task.cancel()
                with contextlib.suppress(Exception):
                    await socket.close()
                self.set_state(GatewayState.CONNECTED, STANDBY_DETAIL)

    async def _open_socket(self) -> None:
        assert self._web is not None and self.config.app_token is not None
        app_token = self.config.app_token.get_secret_value()
        try:
            opened = await self._web.apps_connections_open(app_token=app_token)
        except SlackApiError as exc:
            err = _error_code(exc)
            if err in BAD_CREDENTIALS:
                raise _AuthFailed(f"app_token: {err}") from None
            raise RuntimeError(f"apps.connections.open failed: {err}") from None
        client = _SocketClient(
            app_token=app_token,
            on_refused=self._app_token_refused,
            web_client=self._web,
            auto_reconnect_enabled=True,
            ping_interval=self.config.ping_interval,
            logger=logging.getLogger(f"{__name__}.socket"),
        )
        client.message_listeners.append(self._on_socket_message)
        client.socket_mode_request_listeners.append(self._on_socket_request)
        client.on_close_listeners.append(self._on_socket_close)
        client.wss_uri = opened["url"]
        self._socket = client
        # connect() retries by itself until it succeeds; reconnects on close/disconnect envelopes
        self._spawn(client.connect(), "connect")

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for task in list(self._tasks):
            if task.get_name().endswith((":bootstrap", ":connect", ":socket-lease")):
                task.cancel()
        if self._history is not None:
            self._history.cancel()  # sleeping on its rate bucket, maybe for a minute
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close()
            self._socket = None
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.resolver.aclose()
        await self._save_parents()
        if self._history is not None:
            await self._history.save()
        self.set_state(GatewayState.STOPPED)

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"slack:{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def check(self) -> list[str]:
        """Config remarks, then ``auth.test``: the token, and the scopes Slack says it has
        (``x-oauth-scopes``) against what the bindings and options need."""
        cfg = self.config
        warnings = []
        if cfg.mode == "events" and cfg.app_token is not None:
            warnings.append(f'{self.name}: app_token is unused in mode = "events"')
        web = self._web or AsyncWebClient(
            token=cfg.bot_token.get_secret_value(), base_url=cfg.api_base, session=self.ctx.http,
            timeout=cfg.request_timeout, retry_handlers=[],
        )
        try:
            resp = await web.auth_test()
        except SlackApiError as exc:
            err = _error_code(exc)
            if err in BAD_CREDENTIALS:
                return [*warnings, f"{self.name}: Slack refused bot_token ({err})"]
            return [*warnings, f"{self.name}: auth.test failed ({err})"]
        except Exception as exc:  # noqa: BLE001 - check reports, it does not raise
            return [*warnings, f"{self.name}: Slack API unreachable ({type(exc).__name__})"]
        header = (resp.headers or {}).get("x-oauth-scopes")
        if header is None:
            return warnings  # Slack did not say; nothing more to tell
        have = {s.strip() for s in str(header).split(",") if s.strip()}
        bindings = list(self.ctx.bindings)
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
        for scope, effect in need:
            if scope not in have:
                warnings.append(f"{self.name}: the bot token lacks the {scope} scope: {effect}")
        return warnings

    # -- Socket Mode -------------------------------------------------------------------------
    async def _on_socket_message(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        kind = message.get("type")
        envelope_id = message.get("envelope_id")
        if "payload" in message and not isinstance(message["payload"], dict | str):
            # slack_sdk cannot make a request of it (an ERROR traceback, and it is never acked, so it
            # would come back on every connection): skip it here, with one line, and ack it
            message.pop("payload")
            log.warning("gateway %s: skipped a Socket Mode envelope whose payload is not an object", self.name)
            if isinstance(envelope_id, str) and envelope_id:
                await self._ack_envelope(client, envelope_id)
            return
        if kind == "hello":
            # synchronous up to here: the gaps are taken before this socket's first envelope
            self._hellos += 1
            app_id = (message.get("connection_info") or {}).get("app_id")
            if isinstance(app_id, str) and app_id:
                self.app_id = app_id
            self.set_state(GatewayState.CONNECTED, "socket mode")
            if self._history is not None and self._started:
                self._history.connected(reconnect=self._hellos > 1)
        elif kind == "disconnect":
            self.set_state(GatewayState.TRANSIENT_DISCONNECT, str(message.get("reason") or "disconnect"))

    def _app_token_refused(self, error: str) -> None:
        if self.state == GatewayState.BAD_CREDENTIALS:
            return
        self.set_state(GatewayState.BAD_CREDENTIALS, error)
        log.error(
            "gateway %s: Slack refused the app token while reconnecting (%s); Socket Mode stopped, "
            "fix [gateways.%s].app_token and reload",
            self.name,
            error,
            self.name,
        )

    async def _on_socket_close(self, message: Any) -> None:
        if self._started and self.state != GatewayState.BAD_CREDENTIALS:
            self.set_state(GatewayState.TRANSIENT_DISCONNECT, "socket closed")

    async def _on_socket_request(self, client: Any, req: SocketModeRequest) -> None:
        if not self._started:
            return  # stopping: leave it un-acked, Slack redelivers it to the next connection
        # tracked, so stop() waits for an envelope that is being submitted
        await asyncio.shield(self._spawn(self._process_envelope(client, req), "envelope"))

    async def _process_envelope(self, client: Any, req: SocketModeRequest) -> None:
        # Submit first, ack after: an envelope we fail to submit is left un-acked, so
        # Slack redelivers it; a redelivery is deduplicated by the core (stable Message.id).
        problem = self._envelope_problem(req)
        if problem:
            # it will never parse: acked and skipped, or Slack would redeliver it forever
            log.warning("gateway %s: skipped a Socket Mode %s envelope that does not parse (%s)",
                        self.name, req.type, problem)
            await self._ack_envelope(client, req.envelope_id)
            return
        try:
            if req.type == "events_api":
                await self.handle_event_callback(req.payload)
            elif req.type == "slash_commands":
                await self.handle_slash_command(SlashCommand.model_validate(req.payload))
        except Exception:
            log.exception("gateway %s: could not submit socket envelope (left un-acked)", self.name)
            return
        await self._ack_envelope(client, req.envelope_id)

    async def _ack_envelope(self, client: Any, envelope_id: str) -> None:
        try:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=envelope_id))
        except Exception as exc:  # noqa: BLE001 - socket gone: Slack redelivers, the core dedups
            log.info(
                "gateway %s: could not ack envelope (%s); Slack will redeliver", self.name, type(exc).__name__
            )

    # -- Events API / slash commands over HTTP -------------------------------------------------
    def web_routes(self) -> Sequence[web.RouteDef]:
        return (web.post("/events", self._http_events), web.post("/commands", self._http_commands))

    def _verified(self, request: web.Request, body: bytes) -> bool:
        return self._verifier is not None and self._verifier.verify(request.headers, body)

    async def _http_events(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, max_bytes=MAX_REQUEST_BYTES)  # 413 above; a disconnect is one line
        if not self._started:
            return web.Response(status=503, text="not running")  # Slack retries later
        if not self._verified(request, body):
            log.warning("gateway %s: rejected Events API request with a bad or stale signature", self.name)
            return web.Response(status=401, text="bad signature")
        payload = parse_json_object(body)  # 400: not JSON, not an object, nested absurdly deep
        kind = payload.get("type")
        if kind == "url_verification":
            return web.json_response({"challenge": str(payload.get("challenge", ""))})
        if kind != "event_callback":
            return web.Response(status=200)
        problem = self._event_callback_problem(payload)
        if problem:
            log.warning("gateway %s: refused an event_callback that does not parse (%s)", self.name, problem)
            return web.json_response({"error": f"event_callback does not parse: {problem}"}, status=400)
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.debug(
                "gateway %s: Slack retry #%s (%s)",
                self.name,
                retry,
                request.headers.get("X-Slack-Retry-Reason"),
            )
        task = self._spawn(self.handle_event_callback(payload), "event")
        try:
            await asyncio.shield(task)  # a dropped connection does not abort the commit
        except Exception:
            log.exception("gateway %s: could not submit event; Slack will retry", self.name)
            return web.Response(status=500)
        return web.Response(status=200)

    @staticmethod
    def _event_callback_problem(payload: Mapping[str, Any]) -> str:
        """Why ``payload`` is not an event_callback this gateway can read ("" when it is): checked
        before the event is handed on, so a malformed one is a 400, not a failed submission."""
        try:
            cb = EventCallback.model_validate(payload)
            if cb.event.get("type") == "message":
                MessageEvent.model_validate(cb.event)
        except ValidationError as exc:
            return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False)[:3])
        return ""

    @classmethod
    def _envelope_problem(cls, req: SocketModeRequest) -> str:
        """Why a Socket Mode envelope's payload can never be read ("" when it can): checked before
        anything is submitted, so only a payload that will never parse is skipped."""
        if req.type == "events_api":
            return cls._event_callback_problem(req.payload)
        if req.type == "slash_commands":
            try:
                SlashCommand.model_validate(req.payload)
            except ValidationError as exc:
                return f"{exc.error_count()} errors"
        return ""

    async def _http_commands(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, max_bytes=MAX_REQUEST_BYTES)
        if not self._started:
            return web.Response(status=503, text="not running")
        if not self._verified(request, body):
            log.warning("gateway %s: rejected slash command with a bad or stale signature", self.name)
            return web.Response(status=401, text="bad signature")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        cmd = SlashCommand.model_validate(form)
        task = self._spawn(self.handle_slash_command(cmd), "command")
        try:
            await asyncio.shield(task)
        except Exception:
            log.exception("gateway %s: could not submit slash command", self.name)
            return web.Response(status=500)
        return web.Response(status=200)  # empty: the core answers in the channel

    # -- inbound translation --------------------------------------------------------------------
    def _binding_for(self, channel: str) -> Any | None:
        for b in self.ctx.bindings:
            if b.inbound and b.address.gateway == self.name and b.address.chat == channel:
                return b
        return None

    def _is_foreign_bot_or_own(self, m: MessageEvent, app_id: str = "") -> bool:
        if m.subtype == "bot_message":
            return True
        if m.user and self.bot_user_id and m.user == self.bot_user_id:
            return True
        if m.bot_id:
            if self.config.ignore_bots:
                return True
            # our own posts always stop here, even if auth.test has not told us our bot_id yet
            return self.bot_id is None or m.bot_id == self.bot_id or (bool(app_id) and m.app_id == app_id)
        return False

    async def _load_parents(self) -> None:
        """Thread parents survive restarts: a mesh reply to a Slack *reply* must go to its parent."""
        try:
            saved = await self.ctx.kv_get(PARENTS_KEY) or []
        except Exception as exc:  # noqa: BLE001 - only costs thread placement of old replies
            log.warning("gateway %s: could not load the thread map (%s)", self.name, type(exc).__name__)
            return
        for row in saved:
            if isinstance(row, list) and len(row) == 3 and all(isinstance(x, str) for x in row):
                self._parents.setdefault((row[0], row[1]), row[2])

    async def _save_parents(self) -> None:
        rows = [[c, ts, p] for (c, ts), p in list(self._parents.items())[-PARENTS_SAVED:]]
        try:
            await self.ctx.kv_set(PARENTS_KEY, rows)
        except Exception as exc:  # noqa: BLE001
            log.warning("gateway %s: could not save the thread map (%s)", self.name, type(exc).__name__)

    def _remember_parent(self, channel: str, ts: str, parent: str | None) -> None:
        if parent and parent != ts:
            self._parents[(channel, ts)] = parent
            self._parents.move_to_end((channel, ts))
            while len(self._parents) > 20000:
                self._parents.popitem(last=False)

    async def handle_event_callback(self, payload: Mapping[str, Any]) -> Any:
        """Translate one ``event_callback`` body and submit it. Returns the SubmitResult or None."""
        cb = EventCallback.model_validate(payload)
        if cb.event_id and cb.event_id in self._recent:
            return None
        if cb.event.get("type") != "message":
            return None
        if cb.api_app_id:
            self.app_id = cb.api_app_id
        ev = MessageEvent.model_validate(cb.event)
        result = await self._submit_event(ev, cb)
        if cb.event_id:
            self._recent[cb.event_id] = None
            while len(self._recent) > 5000:
                self._recent.popitem(last=False)
        return result

    async def _submit_event(self, ev: MessageEvent, cb: EventCallback) -> Any:
        """The one inbound path, for live events and history catch-up alike."""
        # one channel at a time, in arrival order: a slow name lookup for one message must not
        # let the next message of the same channel overtake it (the core keeps submit order)
        lock = self._channel_locks.setdefault(ev.channel, asyncio.Lock())
        async with lock:
            msg = await self._to_message(ev, cb)
            result = await self.ctx.submit(msg) if msg is not None else None
        if self._history is not None and ev.ts and self._binding_for(ev.channel) is not None:
            self._history.seen(ev.channel, ev.ts)  # submitted or filtered out: seen
        return result

    async def submit_history(self, channel: str, message: Mapping[str, Any]) -> Any:
        """Submit one ``conversations.history`` message as if it had arrived as a live event:
        same filters, same :attr:`Message.id`, so the core drops whatever also came live."""
        ev = MessageEvent.model_validate({**message, "type": "message", "channel": channel})
        cb = EventCallback(type="event_callback", team_id=self.team_id or "", api_app_id=self.app_id or "")
        return await self._submit_event(ev, cb)

    async def history_page(self, channel: str, **params: Any) -> Mapping[str, Any]:
        """One ``conversations.history`` call. Raises HistoryRateLimited (429), HistoryRefused
        (permanent for this channel, or bad credentials), anything else when it may get better."""
        if self._web is None:
            raise RuntimeError("not started")
        try:
            resp = await self._web.conversations_history(
                channel=channel, **{k: v for k, v in params.items() if v is not None}
            )
        except SlackApiError as exc:
            err = _error_code(exc)
            retry_after = _retry_after(exc)
            if retry_after is not None:
                raise HistoryRateLimited(retry_after) from None
            if err in BAD_CREDENTIALS:
                self.set_state(GatewayState.BAD_CREDENTIALS, err)
                raise HistoryRefused(err, bad_credentials=True) from None
            status = exc.response.status_code if exc.response is not None else 0
            if status < 500 and (err in PERMANENT_ERRORS or err in HISTORY_REFUSALS):
                raise HistoryRefused(err) from None
            raise RuntimeError(f"slack conversations.history: {err}") from None
        data = resp.data
        return data if isinstance(data, Mapping) else {}

    async def _to_message(self, ev: MessageEvent, cb: EventCallback) -> Message | None:
        channel = ev.channel
        binding = self._binding_for(channel)
        if binding is None:
            return None
        team = cb.team_id or ev.team or self.team_id or "-"
        base = f"slack:{self.name}:{team}:{channel}"
        app_id = cb.api_app_id
        raw: dict[str, Any] = {"team": team, "event_id": cb.event_id}

        if ev.subtype == "message_changed" and ev.message is not None:
            inner = ev.message
            if inner.subtype == "tombstone":  # a thread parent deleted while it has replies
                return await self._delete(base, channel, inner.ts, inner.thread_ts, ev.previous_message, raw)
            if self._is_foreign_bot_or_own(inner, app_id) or not self._user_allowed(binding, inner.user):
                return None
            prev = ev.previous_message
            if prev is not None and prev.text == inner.text and len(prev.files) == len(inner.files):
                return None  # reply counts, unfurls, pins: nothing a reader would call an edit
            edited = inner.edited.ts if inner.edited and inner.edited.ts else (ev.ts or ev.event_ts or "")
            thread = inner.thread_ts if inner.is_thread_reply else None
            return await self._build(
                f"{base}:{inner.ts}:edit:{edited}",
                channel,
                inner,
                thread,
                raw,
                edit_of=inner.ts,
            )
        if ev.subtype == "message_deleted":
            if not ev.deleted_ts:
                return None
            return await self._delete(base, channel, ev.deleted_ts, None, ev.previous_message, raw)
        if ev.subtype not in RELAYED_SUBTYPES or ev.hidden:
            return None
        if self._is_foreign_bot_or_own(ev, app_id) or not self._user_allowed(binding, ev.user):
            return None
        thread = ev.thread_ts if ev.is_thread_reply else None
        self._remember_parent(channel, ev.ts, thread)
        return await self._build(f"{base}:{ev.ts}", channel, ev, thread, raw)

    def _user_allowed(self, binding: Any, user: str | None) -> bool:
        opts = _options(binding.options)
        return not opts.allow_users or (user or "") in opts.allow_users

    async def _delete(
        self,
        base: str,
        channel: str,
        ts: str,
        thread_ts: str | None,
        prev: MessageEvent | None,
        raw: dict[str, Any],
    ) -> Message | None:
        if prev is not None and self._is_foreign_bot_or_own(prev):
            return None
        user = prev.user if prev is not None else None
        thread = (prev.thread_ts if prev is not None and prev.is_thread_reply else None) or (
            thread_ts if thread_ts and thread_ts != ts else None
        )
        if user:
            await self.resolver.resolve({user}, set(), self.config.lookup_timeout)
        return Message(
            id=f"{base}:{ts}:delete",
            origin=Address(self.name, channel, thread),
            sender=(self.resolver.user(user) if user else None) or user or "slack",
            sender_id=user or "",
            native_id=ts,
            edit_of=ts,
            deleted=True,
            reply_to=thread,
            created=_ts_time(ts),
            raw=MappingProxyType(raw),
        )

    async def _build(
        self,
        msg_id: str,
        channel: str,
        ev: MessageEvent,
        thread: str | None,
        raw: dict[str, Any],
        *,
        edit_of: str | None = None,
    ) -> Message:
        user = ev.user or ""
        if ev.user_profile is not None and user:
            p = ev.user_profile
            self.resolver.prime_user(user, p.display_name or p.real_name or p.name)
        users, channels = mrkdwn.referenced_ids(ev.text)
        if user:
            users.add(user)
        await self.resolver.resolve(users, channels, self.config.lookup_timeout)
        text = mrkdwn.to_readable(ev.text, self.resolver.user, self.resolver.channel)
        if ev.subtype == "me_message":
            text = f"_{text}_"
        attachments = tuple(
            Attachment(
                name=f.name or f.title or f.id or "file",
                content_type=f.mimetype or "application/octet-stream",
                size=f.size,
                url=self._file_ref(f),
                caption=f.title if f.title and f.title != f.name else "",
            )
            for f in ev.files
        )
        if ev.files:
            # ids only: url_private needs the bot token as a header and never leaves this gateway;
            # the core reads a file back through fetch_attachment(<slackfile: reference>)
            raw["files"] = tuple(MappingProxyType({"id": f.id, "permalink": f.permalink}) for f in ev.files)
        return Message(
            id=msg_id,
            origin=Address(self.name, channel, thread),
            sender=self.resolver.user(user) or user or ev.username or "slack",
            sender_id=user,
            text=text,
            native_id=ev.ts,
            reply_to=thread,
            edit_of=edit_of,
            attachments=attachments,
            created=_ts_time(ev.ts),
            raw=MappingProxyType(raw),
        )

    async def handle_slash_command(self, cmd: SlashCommand) -> Any:
        """``/mesh <cmd> args`` -> an in-chat command message (the core answers in the channel)."""
        text = cmd.text.strip()
        if not text:
            text = "help"
        if not text.startswith("/"):
            text = "/" + text
        if cmd.user_id and cmd.user_name:
            self.resolver.prime_user(cmd.user_id, cmd.user_name)
        team = cmd.team_id or self.team_id or "-"
        ident = cmd.trigger_id or f"{cmd.user_id}:{hash(cmd.text)}"
        msg = Message(
            id=f"slack:{self.name}:{team}:{cmd.channel_id}:cmd:{ident}",
            origin=Address(self.name, cmd.channel_id),
            sender=self.resolver.user(cmd.user_id) or cmd.user_name,
            sender_id=cmd.user_id,
            text=text,
            is_command=True,
        )
        return await self.ctx.submit(msg)

    async def _fetch_user(self, uid: str) -> str | None:
        resp = await self._lookup_call("users_info", user=uid)
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

    async def _fetch_channel(self, cid: str) -> str | None:
        resp = await self._lookup_call("conversations_info", channel=cid)
        if resp is None:
            return None
        return (resp.get("channel") or {}).get("name") or None

    async def _lookup_call(self, method: str, **kwargs: Any) -> Any | None:
        if self._web is None:
            return None
        try:
            return await getattr(self._web, method)(**kwargs)
        except SlackApiError as exc:
            retry_after = _retry_after(exc)
            if retry_after is not None:
                raise mrkdwn.LookupRateLimited(retry_after) from None
            log.info("gateway %s: %s failed: %s", self.name, method, _error_code(exc))
            return None

    # -- egress ------------------------------------------------------------------------------------
    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        r = self.config.rate
        return (
            RateLimit(
                scope=f"slack:{self.name}:channel:{to.chat}",
                per_second=r.per_channel_per_s,
                burst=r.per_channel_burst,
            ),
            RateLimit(
                scope=f"slack:{self.name}:workspace", per_second=r.workspace_per_s, burst=r.workspace_burst
            ),
        )

    def render_text(self, message: Message, text: str, out_options: Mapping[str, Any]) -> str | None:
        return mrkdwn.escape(text)

    def _final_text(self, out: Outbound, opts: SlackBindingOptions, described: Sequence[Attachment] = ()) -> str:
        """The escaped text of ``out`` with a line per ``described`` attachment ("" if none)."""
        # escape again here: idempotent, and it also covers text rendered by another plugin's
        # render_text hook. Mesh text can never carry a live <!channel>/<@U...> into Slack.
        text = mrkdwn.escape(out.text)
        if opts.allow_mass_mentions or _truthy(out.options.get("allow_mass_mentions")):
            text = mrkdwn.enable_mass_mentions(text)
        if described:
            # a link only for public http(s) URLs: a reference (slackfile:, tgfile:) means nothing here
            lines = "\n".join(
                mrkdwn.escape(a.describe() + (f" {a.url}" if _is_http(a.url) else "")) for a in described
            )
            text = f"{text}\n{lines}" if text else lines
        return text

    def _thread_for(self, out: Outbound, opts: SlackBindingOptions) -> str | None:
        channel = out.to.chat
        if out.reply_to:
            # Slack threads hang off the parent: a reply to a reply goes into the parent's thread
            return self._parents.get((channel, out.reply_to), out.reply_to)
        return out.to.thread or opts.thread_ts

    async def send(self, out: Outbound) -> SendResult:
        if self._web is None:
            raise DeliveryError(f"slack gateway {self.name} is not started")
        opts = _options(out.options)
        channel = out.to.chat
        if out.message.deleted:
            if not out.edit_of:
                return SendResult()
            try:
                await self._api("chat_delete", channel=channel, ts=out.edit_of)
            except DeliveryError as exc:
                if getattr(exc, "slack_error", "") != "message_not_found":
                    raise
            return SendResult(native_ids=(out.edit_of,), thread=self._parents.get((channel, out.edit_of)))
        attachments = out.attachments if out.part == 1 else ()
        if out.edit_of:
            # the files went up with the original; an edit changes the text (files that were
            # described by link are described again, as in the original)
            described = [a for a in attachments if a.data is None and _is_http(a.url)]
            text = self._final_text(out, opts, described) or "\u200b"
            await self._api("chat_update", channel=channel, ts=out.edit_of, text=text)
            return SendResult(native_ids=(out.edit_of,), thread=self._parents.get((channel, out.edit_of)))
        files, described = await self._files_to_upload(attachments)
        text = self._final_text(out, opts, described)
        thread = self._thread_for(out, opts)
        if not files:
            ts = await self._post(out, opts, channel, text or "\u200b", thread)
            return SendResult(native_ids=(ts,) if ts else (), thread=thread)
        native: list[str] = []
        comment: str | None = text or None
        # text first: its ts is kept in the gateway's kv until the files are up (or refused for
        # good), so a retry, even after a restart, does not post the text twice
        key = f"{TEXT_FIRST_KEY}:{out.idempotency_key}" if out.idempotency_key else ""
        if text and (self.config.customize or len(text) > self.config.upload_comment_max):
            # (as the sender's username with customize), then the files under it
            saved = await self.ctx.kv_get(key) if key else None
            ts = saved if isinstance(saved, str) else ""
            if not ts:
                ts = await self._post(out, opts, channel, text, thread)
                if key and ts:
                    await self.ctx.kv_set(key, ts)
            if ts:
                native.append(ts)
            comment = None
        text_first = bool(key and text and comment is None)
        try:
            native += await self._upload(channel, thread, files, comment)
        except DeliveryError as exc:
            refusal = getattr(exc, "slack_error", "")
            if not exc.permanent:
                raise  # retried; the text posted first stays remembered
            if text_first:
                await self.ctx.kv_delete(key)
            if refusal not in FILE_REFUSALS:
                raise
            # the workspace will not take these files: the message goes without them
            log.warning("gateway %s: Slack refused the file(s) for %s (%s); sent as a description",
                        self.name, channel, refusal)
            lines = mrkdwn.escape("\n".join(a.describe() for a in files))
            rest = lines if comment is None else f"{comment}\n{lines}"
            ts = await self._post(out, opts, channel, rest, thread)
            native.append(ts)
            return SendResult(native_ids=tuple(n for n in native if n), thread=thread)
        if text_first:
            await self.ctx.kv_delete(key)
        return SendResult(native_ids=tuple(native), thread=thread)

    async def _post(
        self, out: Outbound, opts: SlackBindingOptions, channel: str, text: str, thread: str | None
    ) -> str:
        """chat.postMessage; returns the new message's ts."""
        kwargs: dict[str, Any] = {
            "channel": channel,
            "text": text,
            "unfurl_links": self.config.unfurl,
            "unfurl_media": self.config.unfurl,
        }
        if thread:
            kwargs["thread_ts"] = thread
        if self.config.customize:
            if out.message.sender:
                kwargs["username"] = out.message.sender[:80]
            icon = opts.icon_url or self.config.icon_url
            if icon:
                kwargs["icon_url"] = icon
        resp = await self._api("chat_postMessage", **kwargs)
        ts = str(resp.get("ts") or "")
        if ts:
            self._remember_parent(channel, ts, thread)
        return ts

    # -- files ---------------------------------------------------------------------------------
    def _file_ref(self, f: SlackFile) -> str | None:
        """``slackfile:<gateway>:<file id>``: a reference only this gateway can read (no token, no URL)."""
        if not f.id or f.is_external or f.mode in ("tombstone", "hidden_by_limit", "external"):
            return None
        return f"{FILE_SCHEME}:{self.name}:{f.id}"

    async def _files_to_upload(self, attachments: Sequence[Attachment]) -> tuple[list[Attachment], list[Attachment]]:
        """(attachments with bytes to upload, attachments described in the text).

        Bytes are uploaded: the core fetched them, from another platform or from this workspace (a
        file relayed between two channels: ``capabilities.reuses_own_files`` is False, so the core
        reads it back through :meth:`fetch_attachment` inside its byte budget). A public http(s) URL
        without bytes is described with its link."""
        cap = self.config.upload_max_bytes
        files: list[Attachment] = []
        described: list[Attachment] = []
        for a in attachments:
            if a.data is not None:
                (files if 0 < len(a.data) <= cap else described).append(a)
            else:
                described.append(a)
        return files, described

    async def _upload(
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
            resp = await self._call("files_upload_v2", kwargs, what="files upload", scope_hint=FILES_WRITE_HINT)
            done = [f for f in (resp.get("files") or []) if isinstance(f, Mapping)]
            ts = _share_ts(done, channel) or await self._shared_ts(done, channel)
            if ts:
                ids.append(ts)
                self._remember_parent(channel, ts, thread)
        return ids

    async def _shared_ts(self, files: Sequence[Mapping[str, Any]], channel: str) -> str | None:
        """Slack shares an uploaded file asynchronously: completeUploadExternal may return before
        the file message exists. Ask files.info after each of ``share_waits``; None if still unknown."""
        fid = next((str(f["id"]) for f in files if f.get("id")), None)
        if fid is None or self._web is None:
            return None
        for delay in self.share_waits:
            await asyncio.sleep(delay)
            try:
                resp = await self._web.files_info(file=fid)
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                code = _error_code(exc) if isinstance(exc, SlackApiError) else type(exc).__name__
                log.info("gateway %s: files.info for an uploaded file failed (%s)", self.name, code)
                return None
            info = resp.get("file")
            ts = _share_ts([info], channel) if isinstance(info, Mapping) else None
            if ts:
                return ts
        log.info(
            "gateway %s: file %s in %s not shared yet; its message is not in the message map", self.name, fid, channel
        )
        return None

    @property
    def _fetch_policy(self) -> FetchPolicy:
        """The bot token goes only to Slack's own hosts (https) or to the configured api_base origin,
        and a download follows a redirect only to those."""
        return FetchPolicy(hosts=SLACK_FILE_HOSTS, base=self.config.api_base)

    def _file_url_allowed(self, url: str) -> bool:
        try:
            return not self._fetch_policy.refusal(URL(url, encoded=True), redirect=False)
        except ValueError:
            return False

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes of a ``slackfile:<this gateway>:<file id>`` attachment: ``files.info`` for the
        download URL and size, then a GET with the bot token, streamed and cut at ``max_bytes``.

        The token is sent only to slack.com / *.slack.com (or the api_base host), never follows a
        redirect elsewhere, and no error text carries the token or the URL."""
        prefix = f"{FILE_SCHEME}:{self.name}:"
        ref = attachment.url or ""
        file_id = ref[len(prefix) :] if ref.startswith(prefix) else ""
        if not file_id:
            raise _delivery_error(f"slack {self.name}: not a file of this gateway", permanent=True)
        label = f"slack file {file_id}"
        if attachment.size is not None and attachment.size > max_bytes:
            raise _delivery_error(f"{label} is larger than {max_bytes} bytes", permanent=True)
        if self._web is None:
            raise _delivery_error(f"slack gateway {self.name} is not started")
        try:
            resp = await self._call("files_info", {"file": file_id}, what="files.info", scope_hint=FILES_READ_HINT)
        except DeliveryError as exc:
            if getattr(exc, "slack_error", "").startswith("missing_scope") and "files:read" not in self._warned_scopes:
                self._warned_scopes.add("files:read")
                log.warning(
                    "gateway %s: the bot token lacks files:read; Slack files reach other platforms only as "
                    "descriptions (add the scope and reinstall the app)",
                    self.name,
                )
            raise
        info = SlackFile.model_validate(resp.get("file") or {})
        if info.mode in ("tombstone", "hidden_by_limit"):
            raise _delivery_error(f"{label} is deleted or hidden ({info.mode})", permanent=True)
        if info.size is not None and info.size > max_bytes:
            raise _delivery_error(f"{label} is larger than {max_bytes} bytes", permanent=True)
        url = info.url_private_download or info.url_private
        if info.is_external or not url:
            raise _delivery_error(f"{label} is not stored on Slack", permanent=True)
        return await self._download(url, max_bytes, label, info.mimetype or attachment.content_type)

    async def _download(self, url: str, max_bytes: int, label: str, mimetype: str) -> bytes:
        token = self.config.bot_token.get_secret_value()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.config.request_timeout, sock_read=self.config.request_timeout
        )
        try:
            # every hop (the URL and at most 3 redirects) is checked before the token goes out
            async with safe_get(self.ctx.http, url, policy=self._fetch_policy, what=label,
                                headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as resp:
                status = resp.status
                if status == 429 or status >= 500:
                    # transient; a vendor Retry-After (always for 429) paces the retry
                    retry = _header_seconds(resp.headers.get("Retry-After"))
                    if retry is None and status == 429:
                        retry = 1.0
                    raise _delivery_error(f"{label}: download failed (HTTP {status})", retry_after=retry)
                if status in (401, 403):
                    raise _delivery_error(
                        f"{label}: download refused (HTTP {status}; {FILES_READ_HINT})", permanent=True
                    )
                if status != 200:
                    raise _delivery_error(f"{label}: download failed (HTTP {status})", permanent=True)
                if resp.content_type == "text/html" and not mimetype.startswith("text/html"):
                    # what Slack serves a token that may not read the file: its login page
                    raise _delivery_error(
                        f"{label}: Slack answered with a login page ({FILES_READ_HINT})", permanent=True
                    )
                return await read_capped(resp, max_bytes, label)
        except DeliveryError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # aiohttp's messages carry the URL: only the exception's type leaves here
            raise _delivery_error(f"{label}: download failed ({type(exc).__name__})") from None

    # -- Web API calls -------------------------------------------------------------------------
    async def _api(self, method: str, **kwargs: Any) -> Any:
        hint = "customize = true needs chat:write.customize" if "username" in kwargs else ""
        return await self._call(method, kwargs, scope_hint=hint)

    async def _call(
        self, method: str, kwargs: Mapping[str, Any], *, what: str = "", scope_hint: str = ""
    ) -> Any:
        """One SDK call; every failure becomes a DeliveryError (permanent or not, retry_after)."""
        assert self._web is not None
        what = what or method.replace("_", ".", 1)
        try:
            return await getattr(self._web, method)(**kwargs)
        except SlackApiError as exc:
            err = _error_code(exc)
            retry_after = _retry_after(exc)
            if retry_after is not None:
                raise _delivery_error(
                    f"slack {what}: rate limited", retry_after=retry_after, slack_error=err
                ) from None
            if err in BAD_CREDENTIALS:
                self.set_state(GatewayState.BAD_CREDENTIALS, err)
            if err == "missing_scope" and scope_hint:
                err = f"missing_scope ({scope_hint})"
            permanent = err.split(" ", 1)[0] in PERMANENT_ERRORS
            status = exc.response.status_code if exc.response is not None else 0
            if status >= 500:
                permanent = False
            raise _delivery_error(f"slack {what}: {err}", permanent=permanent, slack_error=err) from None
        except SlackRequestError as exc:
            # files_upload_v2: the POST of the bytes to the upload URL was not answered with 200. The
            # SDK's message quotes the response body; only the status leaves here. A new attempt asks
            # for a new upload URL, so anything but "too large" is worth retrying.
            status = _upload_status(str(exc))
            raise _delivery_error(
                f"slack {what}: the upload was refused (HTTP {status or '?'})",
                permanent=status == 413,
                slack_error=f"http {status}",
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _delivery_error(f"slack {what}: {type(exc).__name__}") from None


# -- helpers --------------------------------------------------------------------------------------


def _delivery_error(
    msg: str,
    *,
    permanent: bool = False,
    retry_after: float | None = None,
    slack_error: str = "",
) -> DeliveryError:
    exc = DeliveryError(msg, permanent=permanent, retry_after=retry_after)
    exc.slack_error = slack_error  # type: ignore[attr-defined]
    return exc


def _error_code(exc: SlackApiError) -> str:
    resp = exc.response
    try:
        err = resp.get("error") if resp is not None else None
    except Exception:  # noqa: BLE001 - non-JSON body
        err = None
    if not err and resp is not None:
        err = f"http {resp.status_code}"
    return str(err or "unknown_error")


def _retry_after(exc: SlackApiError) -> float | None:
    resp = exc.response
    if resp is None:
        return None
    headers = resp.headers or {}
    value = None
    for k, v in headers.items():
        if k.lower() == "retry-after":
            value = v[0] if isinstance(v, list | tuple) else v
    if resp.status_code == 429 or _error_code(exc) == "ratelimited":
        seconds = _header_seconds(value)
        return 1.0 if seconds is None else seconds
    return None


def _is_http(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("http://", "https://"))


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


def _header_seconds(value: str | None) -> float | None:
    return parse_retry_after(value)  # the core's parser: seconds or an HTTP-date, capped


def _upload_status(message: str) -> int | None:
    m = re.search(r"status: (\d{3})", message)
    return int(m.group(1)) if m else None


def _options(raw: Any) -> SlackBindingOptions:
    if isinstance(raw, SlackBindingOptions):
        return raw
    if not raw:
        return SlackBindingOptions()
    data = raw.model_dump() if hasattr(raw, "model_dump") else dict(raw)
    known = {k: v for k, v in data.items() if k in SlackBindingOptions.model_fields}
    try:
        return SlackBindingOptions.model_validate(known)
    except ValueError:
        return SlackBindingOptions()


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes"))


def _ts_time(ts: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)
