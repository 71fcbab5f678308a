"""TelegramGateway: Bot API updates <-> core Messages, core Outbounds -> Bot API calls.

Only translation lives here. Routing, allow-lists, dedup, retries, rate
limiting, splitting and attribution are the core's; this class declares its
rate limits (``rate_limits``), escapes text for HTML (``render_text``) and maps
Bot API failures to ``DeliveryError`` (``retry_after`` from a 429 pauses only
that chat).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hmac
import logging
import random
import time
import urllib.parse
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from claudemesh_gateway import (
    Address,
    Attachment,
    Binding,
    Capabilities,
    ConfigError,
    DeliveryError,
    Gateway,
    GatewayContext,
    GatewayState,
    Message,
    MessageDropped,
    Outbound,
    RateLimit,
    SendResult,
    SubmitResult,
)
from claudemesh_gateway.files import FetchPolicy, read_capped, safe_get
from claudemesh_gateway.plugins.telegram.config import (
    MB,
    TelegramBindingOptions,
    TelegramConfig,
    coerce_options,
)
from claudemesh_gateway.plugins.telegram.format import (
    entities_to_text,
    escape_html,
    html_to_plain,
    markdown_to_html,
    neutralise_mentions,
    truncate_utf16,
    utf16_len,
)
from claudemesh_gateway.plugins.telegram.transport import (
    PLACEHOLDER,
    AiohttpRequest,
    make_bot,
    protect_ptb_logs,
    scrub,
)
from claudemesh_gateway.plugins.telegram.wire import (
    ALLOWED_UPDATES,
    Chat,
    FileObject,
    TgFile,
    TgMessage,
    Update,
    User,
    WebhookInfo,
)
from claudemesh_gateway.retry_after import parse_retry_after
from claudemesh_gateway.webhooks import MalformedHeader, header_value, read_json_object
from pydantic import ValidationError
from telegram import Bot, BotCommand, InputFile, LinkPreviewOptions, ReplyParameters
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

log = logging.getLogger(__name__)

__all__ = ["TelegramGateway"]

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1 * MB  # a webhook update (Telegram's are a few KiB; files arrive as references)
MAX_CAPTION = 1024
PHOTO_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png"})
PHOTO_MAX_BYTES = 10 * MB
UNAUTHORISED_REPLY_EVERY_S = 3600.0
# The core's in-chat commands (docs/contracts.md), shown in Telegram's "/" menu.
BOT_COMMANDS = (
    ("topics", "the mesh topics and tags this chat is bridged to"),
    ("peers", "who is on the mesh right now"),
    ("status", "gateway and mesh status"),
    ("dm", "<peer> <text>: direct message to a mesh peer"),
    ("help", "what this bot does"),
)
TELEGRAM_API_HOST = "api.telegram.org"  # the only host file downloads go to, besides the configured api_base


def _chat_id(chat: str) -> int | str:
    """Numeric chat ids as int; ``@channelusername`` stays a string."""
    try:
        return int(chat)
    except ValueError:
        return chat


def _is_group(chat: str) -> bool:
    return chat.startswith(("-", "@"))


def _retry_after_seconds(exc: RetryAfter) -> float:
    ra = exc.retry_after
    seconds = ra.total_seconds() if isinstance(ra, dt.timedelta) else float(ra)
    return parse_retry_after(str(seconds)) or 0.0  # the core's bounds: never negative, capped


def _is_parse_error(exc: BadRequest) -> bool:
    return "can't parse entities" in exc.message.lower() or "can't find end" in exc.message.lower()


class TelegramGateway(Gateway):
    kind = "telegram"
    Config = TelegramConfig
    BindingOptions = TelegramBindingOptions
    capabilities = Capabilities(
        max_text=4096, max_parts=10, threads=True, replies=True, edits=True, deletes=False,
        media=True, max_media_bytes=50 * MB, formatting="html",
        reuses_own_files=True,  # a file_id of this bot is sent again as is: nothing downloaded
    )

    # backoff for ingress reconnects (seconds); tests shrink these
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    conflict_backoff_max: float = 60.0
    standby_interval: float = 5.0  # a standby replica asks for the polling lease this often
    drain_timeout: float = 5.0

    config: TelegramConfig

    def __init__(self, name: str, config: TelegramConfig, ctx: GatewayContext) -> None:
        super().__init__(name, config, ctx)
        self._bot: Bot | None = None
        self._request: AiohttpRequest | None = None
        self._me: User | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._in_batch = False
        self._batch_done = asyncio.Event()
        self._ready = asyncio.Event()
        self._webhook_set = False
        self._background: set[asyncio.Task[Any]] = set()
        self._unauth_replied: dict[str, float] = {}
        # partial progress of multi-call sends (text + files), keyed by Outbound.idempotency_key,
        # so a retry after a transient failure does not re-send what already went out
        self._progress: collections.OrderedDict[str, list[str]] = collections.OrderedDict()

    # ------------------------------------------------------------------ helpers
    @property
    def _token(self) -> str:
        return self.config.token.get_secret_value()

    def _scrub(self, text: str) -> str:
        secret = self.config.webhook_secret.get_secret_value() if self.config.webhook_secret else ""
        return scrub(text, self._token, secret)

    def _ensure_bot(self) -> Bot:
        if self._bot is None:
            secrets = [self._token]
            if self.config.webhook_secret is not None:
                secrets.append(self.config.webhook_secret.get_secret_value())
            for s in secrets:
                self.ctx.register_secret(s)
            protect_ptb_logs(*secrets)
            self._bot, self._request = make_bot(lambda: self.ctx.http, self._token, self.config.api_base)
        return self._bot

    @property
    def public_url(self) -> str | None:
        """This table's ``public_url``, else ``[server] public_url`` (``ctx.public_url``)."""
        base = self.config.public_url or getattr(self.ctx, "public_url", None)
        return base.rstrip("/") if base else None

    @property
    def webhook_url(self) -> str | None:
        base = self.public_url
        if not base:
            return None
        return f"{base}/gateways/{self.name}/webhook"

    def _backoff(self, attempt: int, cap: float | None = None) -> float:
        cap = self.backoff_max if cap is None else cap
        base = min(cap, self.backoff_initial * (2 ** min(attempt, 16)))
        return base * random.uniform(0.5, 1.0)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro, name=f"telegram:{self.name}:{what}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_ready(self, limit_s: float = 10.0) -> None:
        """Wait until ingress is up (webhook registered, or the first getUpdates answered)."""
        await asyncio.wait_for(self._ready.wait(), limit_s)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._started:
            return  # idempotent (even when the ingress task already finished, e.g. webhook registered)
        if self.config.mode == "webhook" and not self.public_url:
            raise ConfigError(f"gateways.{self.name}: mode = \"webhook\" needs a public URL: set public_url in "
                              f"[gateways.{self.name}] or [server] public_url")
        self._started = True
        self._ensure_bot()
        self._stopping = False
        self._ready.clear()
        self.set_state(GatewayState.STARTING)
        self._task = asyncio.create_task(self._run(), name=f"telegram:{self.name}:ingress")

    async def stop(self) -> None:
        self._stopping = True
        self._started = False
        task, self._task = self._task, None
        if task is not None and not task.done():
            if self._in_batch:  # let the batch finish: submit + offset save
                try:
                    await asyncio.wait_for(self._batch_done.wait(), self.drain_timeout)
                except TimeoutError:
                    log.warning("telegram %s: stop while an update batch is in flight", self.name)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._webhook_set and self.config.delete_webhook_on_stop and self._bot is not None:
            self._webhook_set = False
            try:
                await asyncio.wait_for(self._bot.delete_webhook(), 5.0)
            except (TelegramError, TimeoutError) as exc:
                log.warning("telegram %s: deleteWebhook on stop failed: %s", self.name, self._scrub(str(exc)))
        if self._state != GatewayState.STOPPED:
            self.set_state(GatewayState.STOPPED)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                if not await self._hello():
                    return
                if self.config.mode == "webhook":
                    await self._register_webhook()
                else:
                    await self._poll_loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # boundary of the background task: log, back off, restart
                log.exception("telegram %s: ingress failed unexpectedly; restarting it", self.name)
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, "ingress failed unexpectedly; restarting")
                await self._sleep(self._backoff(attempt))
                attempt += 1

    async def _hello(self) -> bool:
        """getMe until it works. False when the token is bad (retries would not help)."""
        attempt = 0
        while not self._stopping:
            try:
                self._me = await self._get_me()
                log.info("telegram %s: connected as @%s (id %s)", self.name, self._me.username, self._me.id)
                if self.config.set_commands:
                    await self._set_commands()
                return True
            except InvalidToken:
                self.set_state(GatewayState.BAD_CREDENTIALS,
                               f"bot token rejected by Telegram: check [gateways.{self.name}].token")
                log.error("telegram %s: bot token rejected by Telegram (401/404)", self.name)
                return False
            except RetryAfter as exc:
                await self._sleep(_retry_after_seconds(exc))
            except TelegramError as exc:
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, self._scrub(exc.message))
                await self._sleep(self._backoff(attempt))
                attempt += 1
        return False

    async def _raw(self, method: str, *, read_timeout: float | None = None, **params: Any) -> Any:
        """A Bot API call returning plain JSON (no PTB object parsing).

        Used for getUpdates and getChat: we parse those with our own tolerant models
        (wire.py), so a field PTB's version expects but a Bot API server doesn't send
        (or the reverse) can never break ingress. PTB warns that a typed method exists;
        that is exactly what we are avoiding here.
        """
        bot = self._ensure_bot()
        kwargs: dict[str, Any] = {"api_kwargs": {k: v for k, v in params.items() if v is not None}}
        if read_timeout is not None:
            kwargs["read_timeout"] = read_timeout
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return await bot.do_api_request(method, **kwargs)

    async def _set_commands(self) -> None:
        """Register the core's in-chat commands in Telegram's command menu (best effort)."""
        try:
            await self._ensure_bot().set_my_commands([BotCommand(c, d) for c, d in BOT_COMMANDS])
        except TelegramError as exc:
            log.info("telegram %s: setMyCommands failed (%s); the menu stays as it was",
                     self.name, self._scrub(exc.message))

    async def _get_me(self) -> User:
        bot = self._ensure_bot()
        me = await bot.get_me()
        return User.model_validate(me.to_dict())

    async def _register_webhook(self) -> None:
        bot = self._ensure_bot()
        assert self.config.webhook_secret is not None
        attempt = 0
        while not self._stopping:
            try:
                await bot.set_webhook(
                    url=self.webhook_url or "",
                    secret_token=self.config.webhook_secret.get_secret_value(),
                    allowed_updates=list(ALLOWED_UPDATES),
                    max_connections=self.config.max_connections,
                    drop_pending_updates=self.config.drop_pending_updates,
                )
                self._webhook_set = True
                self.set_state(GatewayState.CONNECTED, f"webhook {self.webhook_url}")
                self._ready.set()
                return
            except InvalidToken:
                self.set_state(GatewayState.BAD_CREDENTIALS, "bot token rejected by Telegram")
                return
            except BadRequest as exc:  # e.g. bad URL / port: an operator error, retried slowly
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, f"setWebhook refused: {self._scrub(exc.message)}")
                await self._sleep(self._backoff(attempt, self.conflict_backoff_max))
            except RetryAfter as exc:
                await self._sleep(_retry_after_seconds(exc))
            except TelegramError as exc:
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, self._scrub(exc.message))
                await self._sleep(self._backoff(attempt))
            attempt += 1

    # ------------------------------------------------------------------ polling
    async def _poll_loop(self) -> None:
        bot = self._ensure_bot()
        attempt = 0
        webhook_cleared = False
        drop_pending = self.config.drop_pending_updates  # only once: never drop on a re-clear after a 409
        stored = await self.ctx.kv_get("offset")
        offset: int | None = int(stored) if stored is not None else None
        standby = False
        while not self._stopping:
            if not await self._poll_lease():  # another replica polls this bot: reading too would 409
                if not standby:
                    standby = True
                    self.set_state(GatewayState.CONNECTED, "standby: another replica polls this bot")
                    self._ready.set()
                await self._sleep(self.standby_interval)
                continue
            if standby:  # taken over: the last owner advanced the offset
                standby = False
                self.set_state(GatewayState.STARTING, "taking over polling from another replica")
                stored = await self.ctx.kv_get("offset")
                offset = int(stored) if stored is not None else None
            try:
                if not webhook_cleared:
                    # polling and a webhook are mutually exclusive (409 otherwise)
                    await bot.delete_webhook(drop_pending_updates=drop_pending)
                    webhook_cleared, drop_pending = True, False
                updates = await self._raw(
                    "getUpdates", offset=offset, timeout=self.config.poll_timeout,
                    allowed_updates=list(ALLOWED_UPDATES), read_timeout=self.config.poll_timeout + 10.0,
                )
            except InvalidToken:
                self.set_state(GatewayState.BAD_CREDENTIALS,
                               f"bot token rejected by Telegram: check [gateways.{self.name}].token")
                log.error("telegram %s: bot token rejected while polling; polling stopped", self.name)
                return
            except Conflict:
                detail = ("409 Conflict: another process is polling this bot token, or a webhook is set; "
                          "run one instance per token (or use mode = \"webhook\")")
                self.set_state(GatewayState.BAD_CREDENTIALS, detail)
                log.error("telegram %s: %s", self.name, detail)
                webhook_cleared = False
                await self._sleep(self._backoff(attempt, self.conflict_backoff_max))
                attempt += 1
                continue
            except RetryAfter as exc:
                await self._sleep(_retry_after_seconds(exc))
                continue
            except TelegramError as exc:  # NetworkError, TimedOut, 5xx
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, self._scrub(exc.message))
                log.warning("telegram %s: getUpdates failed (%s); retrying", self.name, self._scrub(exc.message))
                await self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            if self._state != GatewayState.CONNECTED:
                self.set_state(GatewayState.CONNECTED, "polling")
            attempt = 0
            self._ready.set()
            if not updates:
                continue
            batch, skipped = _update_batch(updates)
            if skipped:
                # not updates Telegram could send: skipped (the offset moves past the good ones only)
                log.warning("telegram %s: skipped %d entries of a getUpdates answer without a usable "
                            "update_id", self.name, skipped)
            if not batch:
                await self._sleep(self._backoff(attempt))  # nothing to confirm: do not ask again at once
                attempt += 1
                continue
            offset = await self._process_batch(batch, offset)

    async def _poll_lease(self) -> bool:
        """Several replicas: only the one holding this gateway's "poll" lease calls getUpdates."""
        exclusive = getattr(self.ctx, "exclusive", None)  # contexts from before leases existed
        if exclusive is None:
            return True
        try:
            held = await exclusive("poll")
        except Exception as exc:  # noqa: BLE001 - the store is down: do not poll blind
            log.warning("telegram %s: cannot check the polling lease (%s)", self.name, type(exc).__name__)
            held = False
        return held

    async def _process_batch(self, batch: Sequence[tuple[int, dict[str, Any]]], offset: int | None) -> int | None:
        """Submit each update, then persist the offset past the last one that was submitted.

        The offset is saved only after ``ctx.submit`` returned, so a crash in
        between re-fetches the update on restart (the inbox ledger drops the
        duplicate by its stable id); nothing is lost.
        """
        self._in_batch = True
        self._batch_done.clear()
        new_offset = offset
        failed = False
        try:
            for update_id, data in batch:
                try:
                    await self._handle_update(data)
                except Exception as exc:  # noqa: BLE001 - the core could not take it: retry from here
                    log.warning("telegram %s: submit failed for update %s (%s); will retry",
                                self.name, update_id, type(exc).__name__)
                    failed = True
                    break
                new_offset = update_id + 1
            if new_offset != offset:
                await self.ctx.kv_set("offset", new_offset)
        finally:
            self._in_batch = False
            self._batch_done.set()
        if failed:
            self.set_state(GatewayState.TRANSIENT_DISCONNECT, "core did not accept an update; retrying")
            await self._sleep(self._backoff(1))
        return new_offset

    # ------------------------------------------------------------------ webhook
    def web_routes(self) -> Sequence[web.RouteDef]:
        return [web.post("/webhook", self._webhook)]

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        # 1. authenticate before reading or parsing anything
        expected = self.config.webhook_secret
        if self.config.mode != "webhook" or expected is None:
            return web.Response(status=404)
        try:
            got = header_value(request.headers, SECRET_HEADER)
        except MalformedHeader as exc:
            log.warning("telegram %s: webhook call rejected: %s", self.name, exc)
            return web.Response(status=401, text="malformed secret token")
        if got is None:
            return web.Response(status=401, text="missing secret token")
        if not hmac.compare_digest(got.encode(), expected.get_secret_value().encode()):
            log.warning("telegram %s: webhook call with a wrong secret token rejected", self.name)
            return web.Response(status=403, text="bad secret token")
        if self._stopping:
            return web.Response(status=503)  # Telegram retries later; nothing lost
        # 2. parse: 400 for a body that is not one JSON object (or nests absurdly deep), 413 above the cap
        data = await read_json_object(request, max_bytes=MAX_UPDATE_BYTES)
        # 3. hand to the core; acknowledge only once it is durable
        try:
            await self._handle_update(data)
        except Exception as exc:  # noqa: BLE001 (boundary)
            log.warning("telegram %s: submit failed for a webhook update (%s); asking Telegram to retry",
                        self.name, type(exc).__name__)
            return web.Response(status=503)
        return web.Response(status=200)

    # ------------------------------------------------------------------ inbound translation
    async def _handle_update(self, data: Mapping[str, Any]) -> SubmitResult | None:
        """One update -> at most one ``ctx.submit``. Raises only if the core failed to take it."""
        try:
            update = Update.model_validate(data)
        except ValidationError as exc:
            log.warning("telegram %s: skipping an update that does not parse (%d errors)",
                        self.name, exc.error_count())
            return None
        msg, edited = update.content()
        if msg is None:
            return None
        if msg.migrate_to_chat_id is not None:
            log.warning("telegram %s: group %s was upgraded to supergroup %s: update the routes to chat = \"%s\"",
                        self.name, msg.chat.id, msg.migrate_to_chat_id, msg.migrate_to_chat_id)
            return None
        if self._me is not None and msg.from_ is not None and msg.from_.id == self._me.id:
            return None  # our own message (never relayed back)
        bindings = self._inbound_bindings(msg.chat, self._thread_of(msg))
        message = self._to_message(update, msg, edited, bindings[0] if bindings else None, dict(data))
        if message is None:
            return None  # service message or nothing we can carry
        if not bindings:
            if any(self._chat_matches(b.address.chat, msg.chat) for b in self.ctx.bindings):
                # a chat we post into (outbound-only, or another forum topic): no "unauthorised" reply
                self._drop(message, "no_inbound_binding", msg.chat, reply=False)
            else:
                self._drop(message, "unbound_chat", msg.chat)
            return None
        allowed = [b for b in bindings if self._sender_allowed(msg, coerce_options(b.options))]
        if not allowed:
            self._drop(message, "denied", msg.chat)
            return None
        return await self.ctx.submit(message)

    def _drop(self, message: Message, reason: str, chat: Chat, *, reply: bool = True) -> None:
        log.info("telegram %s: dropped a message from chat %s (%s)", self.name, chat.id, reason)
        self.ctx.emit(MessageDropped(message=message, reason=reason))
        text = self.config.reply_unauthorised
        if not reply or not text or chat.type == "channel":
            return
        key = str(chat.id)
        now = time.monotonic()
        if now - self._unauth_replied.get(key, -UNAUTHORISED_REPLY_EVERY_S) < UNAUTHORISED_REPLY_EVERY_S:
            return
        self._unauth_replied[key] = now
        self._spawn(self._reply_unauthorised(chat.id, text, message.native_id), "unauthorised-reply")

    async def _reply_unauthorised(self, chat_id: int, text: str, native_id: str | None) -> None:
        try:
            await self._ensure_bot().send_message(
                chat_id=chat_id, text=text,
                reply_parameters=(ReplyParameters(message_id=int(native_id), allow_sending_without_reply=True)
                                  if native_id else None),
            )
        except TelegramError as exc:
            log.info("telegram %s: could not send the unauthorised reply: %s", self.name, self._scrub(exc.message))

    @staticmethod
    def _thread_of(msg: TgMessage) -> str | None:
        # message_thread_id is a forum topic only when is_topic_message; in ordinary
        # supergroups it names a reply chain, which is not a thread we map.
        if msg.is_topic_message and msg.message_thread_id is not None:
            return str(msg.message_thread_id)
        return None

    def _inbound_bindings(self, chat: Chat, thread: str | None) -> list[Binding]:
        """Inbound bindings that cover this chat (and forum topic), most specific first."""
        found: list[tuple[int, Binding]] = []
        for b in self.ctx.bindings:
            if not b.inbound or b.address.gateway != self.name:
                continue
            if not self._chat_matches(b.address.chat, chat):
                continue
            opts = coerce_options(b.options)
            bthread = b.address.thread or (str(opts.message_thread_id) if opts.message_thread_id else None)
            if bthread is not None and bthread != thread:
                continue
            found.append((0 if bthread is not None else 1, b))
        found.sort(key=lambda t: t[0])
        return [b for _, b in found]

    def _chat_matches(self, bound: str, chat: Chat) -> bool:
        if bound == str(chat.id):
            return True
        return bool(bound.startswith("@") and chat.username and bound[1:].lower() == chat.username.lower())

    def _sender_allowed(self, msg: TgMessage, opts: TelegramBindingOptions) -> bool:
        user = msg.from_
        ignore_bots = self.config.ignore_bots if opts.ignore_bots is None else opts.ignore_bots
        if ignore_bots and user is not None and user.is_bot:
            return False
        if not opts.allow_users:
            return True
        ids: set[str] = set()
        if user is not None:
            ids.add(str(user.id))
            if user.username:
                ids.add("@" + user.username.lower())
        elif msg.sender_chat is not None:
            ids.add(str(msg.sender_chat.id))
            if msg.sender_chat.username:
                ids.add("@" + msg.sender_chat.username.lower())
        for entry in opts.allow_users:
            e = entry.strip()
            e = e.lower() if e.startswith("@") else e
            if e in ids or ("@" + e.lower()) in ids:
                return True
        return False

    def _sender(self, msg: TgMessage) -> tuple[str, str]:
        if msg.from_ is not None and not (msg.sender_chat is not None and msg.from_.is_bot
                                          and msg.from_.username == "GroupAnonymousBot"):
            return msg.from_.display_name, str(msg.from_.id)
        if msg.sender_chat is not None:  # channel posts, anonymous admins, linked channels
            name = msg.author_signature or msg.sender_chat.display_name
            return name, str(msg.sender_chat.id)
        return msg.chat.display_name, str(msg.chat.id)

    def _command(self, text: str, msg: TgMessage) -> tuple[bool, str]:
        """Bot commands (``/help``, ``/help@this_bot``) become core commands; a command
        addressed to another bot is ordinary text."""
        entities = msg.entities if msg.text is not None else msg.caption_entities
        first = next((e for e in entities if e.type == "bot_command" and e.offset == 0), None)
        if first is None:
            if text.startswith("/") and not entities and len(text) > 1 and text[1].isalpha():
                first_word = text.split(maxsplit=1)[0]
                if "@" not in first_word:
                    return True, text
            return False, text
        command = text[: first.length]
        rest = text[first.length:]
        if "@" in command:
            cmd, _, target = command.partition("@")
            if self._me is not None and self._me.username and target.lower() != self._me.username.lower():
                return False, text
            command = cmd
        if command.lower() == "/start":
            # Telegram's "Start" button (and deep links /start <payload>): show the core's help
            return True, "/help"
        return True, command + rest

    def _ref(self, file_id: str) -> str:
        # never the download URL: it contains the bot token
        return f"tgfile:{self.name}:{file_id}"

    def _attachments(self, msg: TgMessage) -> tuple[Attachment, ...]:
        out: list[Attachment] = []
        if msg.photo:
            p = max(msg.photo, key=lambda s: (s.width * s.height, s.file_size or 0))
            out.append(Attachment(name=f"photo_{p.file_unique_id or msg.message_id}.jpg", content_type="image/jpeg",
                                  size=p.file_size, url=self._ref(p.file_id)))
        kinds: tuple[tuple[str, str, str], ...] = (
            ("document", "document", "application/octet-stream"),
            ("video", "video.mp4", "video/mp4"),
            ("animation", "animation.mp4", "video/mp4"),
            ("audio", "audio.mp3", "audio/mpeg"),
            ("voice", "voice.ogg", "audio/ogg"),
            ("video_note", "video_note.mp4", "video/mp4"),
        )
        for attr, default_name, default_type in kinds:
            f: FileObject | None = getattr(msg, attr)
            if f is None:
                continue
            name = f.file_name or (
                " - ".join(p for p in (f.performer, f.title) if p) if attr == "audio" else ""
            ) or default_name
            out.append(Attachment(name=name, content_type=f.mime_type or default_type, size=f.file_size,
                                  url=self._ref(f.file_id)))
        if msg.sticker is not None:
            s = msg.sticker
            name, ctype = ("sticker.tgs", "application/x-tgsticker") if s.is_animated else (
                ("sticker.webm", "video/webm") if s.is_video else ("sticker.webp", "image/webp"))
            out.append(Attachment(name=name, content_type=ctype, size=s.file_size, url=self._ref(s.file_id),
                                  caption=s.emoji or ""))
        return tuple(out)

    def _to_message(self, update: Update, msg: TgMessage, edited: bool, binding: Binding | None,
                    raw: dict[str, Any]) -> Message | None:
        thread = self._thread_of(msg)
        if msg.text is not None:
            text = entities_to_text(msg.text, msg.entities)
        else:
            text = entities_to_text(msg.caption or "", msg.caption_entities)
        is_command, text = self._command(text, msg)
        attachments = self._attachments(msg)
        if not text and not attachments:
            return None
        sender, sender_id = self._sender(msg)
        reply_to = None
        r = msg.reply_to_message
        # in a forum topic every message "replies" to the topic's creation message; not a real reply
        if r is not None and not (thread is not None and r.message_id == msg.message_thread_id):
            reply_to = str(r.message_id)
        chat = binding.address.chat if binding is not None and binding.address.chat.startswith("@") \
            else str(msg.chat.id)
        mid = f"telegram:{self.name}:{msg.chat.id}:{msg.message_id}"
        if edited:
            # edit_date alone can repeat within one second; the update id keeps each edit distinct
            # and is the same on redelivery, so the id stays idempotent
            mid += f":edit:{msg.edit_date or 0}:{update.update_id}"
        when = msg.edit_date if edited and msg.edit_date else msg.date
        return Message(
            id=mid,
            origin=Address(self.name, chat, thread),
            sender=sender,
            sender_id=sender_id,
            text=text,
            # an edit carries the original's id in edit_of only: the core records native_id in its
            # message map, and a second entry with the same native id (the edit) would shadow the
            # original there, so later replies/edits could no longer find the original's copies
            native_id=None if edited else str(msg.message_id),
            attachments=attachments,
            reply_to=reply_to,
            edit_of=str(msg.message_id) if edited else None,
            is_command=is_command,
            created=dt.datetime.fromtimestamp(when, dt.UTC) if when else dt.datetime.now(dt.UTC),
            raw=raw,
        )

    # ------------------------------------------------------------------ outbound
    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        r = self.config.rate
        limits = [RateLimit(scope=f"telegram:{self.name}:chat:{to.chat}", per_second=r.per_chat_per_s,
                            burst=r.per_chat_burst)]
        if _is_group(to.chat):
            limits.append(RateLimit(scope=f"telegram:{self.name}:group:{to.chat}",
                                    per_second=r.per_group_per_min / 60.0, burst=r.per_group_burst))
        limits.append(RateLimit(scope=f"telegram:{self.name}:global", per_second=r.global_per_s,
                                burst=r.global_burst))
        return limits

    def _html(self, opts: TelegramBindingOptions) -> bool:
        return (opts.parse_mode or self.config.parse_mode) == "HTML"

    def render_text(self, message: Message, text: str, out_options: Mapping[str, Any]) -> str | None:
        """Attributed plain text -> what ``send`` posts. HTML mode: everything escaped (mesh text
        is never markup), then -- unless ``markdown = false`` -- a safe Markdown subset (code
        fences, inline code, ``**bold**``, ``[label](https://…)``) turned into Telegram tags.
        Mentions are made inert when the binding asks for it."""
        opts = coerce_options(out_options)
        if opts.mentions == "neutralise":
            text = neutralise_mentions(text)
        if not self._html(opts):
            return text
        html = escape_html(text)
        markdown = self.config.markdown if opts.markdown is None else opts.markdown
        return markdown_to_html(html) if markdown else html

    async def send(self, out: Outbound) -> SendResult:
        bot = self._ensure_bot()
        opts = coerce_options(out.options)
        html = self._html(opts)
        thread = out.to.thread or (str(opts.message_thread_id) if opts.message_thread_id else None)
        if not out.text.strip() and not out.attachments and not out.edit_of:
            return SendResult(native_ids=(), thread=thread)  # nothing Telegram would accept
        common: dict[str, Any] = {"chat_id": _chat_id(out.to.chat)}
        if thread:
            try:
                common["message_thread_id"] = int(thread)
            except ValueError:
                raise DeliveryError(f"telegram: thread {thread!r} is not a forum topic id", permanent=True) from None
        if opts.disable_notification:
            common["disable_notification"] = True
        if opts.protect_content:
            common["protect_content"] = True
        preview = self.config.link_preview if opts.link_preview is None else opts.link_preview
        key = out.idempotency_key
        done = list(self._progress.get(key, [])) if key else []
        try:
            if out.edit_of:
                ids = [await self._edit(bot, out, common, html, preview)]
            else:
                ids = await self._send_new(bot, out, common, html, preview, done, key)
        except TelegramError as exc:
            raise self._delivery_error(exc, out.to.chat) from None
        if key:
            self._progress.pop(key, None)
        return SendResult(native_ids=tuple(ids), thread=thread)

    def _remember(self, key: str, ids: list[str]) -> None:
        if not key:
            return
        self._progress[key] = list(ids)
        self._progress.move_to_end(key)
        while len(self._progress) > 1000:
            self._progress.popitem(last=False)

    def _media_plan(self, atts: Sequence[Attachment]) -> tuple[list[Attachment], list[str]]:
        """Which attachments go as files, and descriptions for the ones that can't."""
        sendable: list[Attachment] = []
        described: list[str] = []
        for a in atts:
            if a.data is not None:
                ok = len(a.data) <= self.config.upload_max_bytes
            else:  # a file of this bot (reused by file_id) or a URL Telegram fetches itself
                ok = bool(a.url) and a.url.startswith((f"tgfile:{self.name}:", "https://", "http://"))
            if ok:
                sendable.append(a)
            else:
                described.append(a.describe())
        return sendable, described

    async def _send_new(self, bot: Bot, out: Outbound, common: dict[str, Any], html: bool, preview: bool,
                        done: list[str], key: str) -> list[str]:
        text = out.text
        sendable, described = self._media_plan(out.attachments)
        if described:
            extra = "\n".join(escape_html(d) if html else d for d in described)
            text = f"{text}\n{extra}" if text else extra
        reply_to = out.reply_to
        steps: list[tuple[str, Any]] = []
        plain_len = utf16_len(html_to_plain(text) if html else text)
        if len(sendable) == 1 and plain_len <= MAX_CAPTION:
            steps.append(("media", (sendable[0], text)))
        else:
            if text:
                steps.append(("text", text))
            steps.extend(("media", (a, escape_html(a.caption) if html else a.caption)) for a in sendable)
        ids = list(done)
        for i, (kind, payload) in enumerate(steps):
            if i < len(done):
                continue  # sent before a transient failure; don't repeat it
            rt = reply_to if i == 0 else None
            if kind == "text":
                ids.append(await self._send_text(bot, payload, common, html, preview, rt))
            else:
                att, caption = payload
                ids.append(await self._send_media(bot, att, caption, common, html, preview, rt))
            self._remember(key, ids)
        return ids

    @staticmethod
    def _reply(reply_to: str | None) -> ReplyParameters | None:
        if not reply_to:
            return None
        try:
            return ReplyParameters(message_id=int(reply_to), allow_sending_without_reply=True)
        except ValueError:
            return None

    async def _send_text(self, bot: Bot, text: str, common: dict[str, Any], html: bool, preview: bool,
                         reply_to: str | None) -> str:
        kwargs = dict(common, link_preview_options=LinkPreviewOptions(is_disabled=not preview),
                      reply_parameters=self._reply(reply_to))
        try:
            m = await bot.send_message(text=text, parse_mode="HTML" if html else None, **kwargs)
        except BadRequest as exc:
            if not (html and _is_parse_error(exc)):
                raise
            # never drop a message for a formatting problem: resend what a reader should see
            log.warning("telegram %s: chat %s rejected HTML (%s); re-sending as plain text",
                        self.name, common["chat_id"], exc.message)
            m = await bot.send_message(text=html_to_plain(text), parse_mode=None, **kwargs)
        return str(m.message_id)

    async def _send_media(self, bot: Bot, att: Attachment, caption: str, common: dict[str, Any], html: bool,
                          preview: bool, reply_to: str | None) -> str:
        if att.data is not None:
            file: Any = InputFile(att.data, filename=att.name)
            size = len(att.data)
        elif att.url and att.url.startswith("tgfile:"):
            file = att.url.split(":", 2)[2]  # same bot: the file_id is reusable, nothing to download
            size = att.size or 0
        else:
            file = att.url
            size = att.size or 0
        photo = att.content_type.lower() in PHOTO_TYPES and size <= PHOTO_MAX_BYTES
        kwargs = dict(common, reply_parameters=self._reply(reply_to))
        cap = caption or None
        try:
            try:
                if photo:
                    m = await bot.send_photo(photo=file, caption=cap, parse_mode="HTML" if html and cap else None,
                                             **kwargs)
                else:
                    m = await bot.send_document(document=file, caption=cap,
                                                parse_mode="HTML" if html and cap else None, **kwargs)
            except BadRequest as exc:
                if not (html and cap and _is_parse_error(exc)):
                    raise
                plain = html_to_plain(cap)
                if photo:
                    m = await bot.send_photo(photo=file, caption=plain, **kwargs)
                else:
                    m = await bot.send_document(document=file, caption=plain, **kwargs)
        except BadRequest as exc:
            # the file itself was refused (unknown file id, URL Telegram can't fetch, wrong type):
            # deliver the description instead of losing the message
            log.warning("telegram %s: chat %s refused file %r (%s); sending its description",
                        self.name, common["chat_id"], att.name, exc.message)
            desc = att.describe()
            if caption:
                desc = f"{html_to_plain(caption) if html else caption}\n{desc}"
            return await self._send_text(bot, escape_html(desc) if html else desc, common, html, preview, reply_to)
        return str(m.message_id)

    async def _edit(self, bot: Bot, out: Outbound, common: dict[str, Any], html: bool, preview: bool) -> str:
        assert out.edit_of is not None
        kwargs: dict[str, Any] = {
            "chat_id": common["chat_id"], "message_id": int(out.edit_of),
            "link_preview_options": LinkPreviewOptions(is_disabled=not preview),
        }
        try:
            try:
                await bot.edit_message_text(text=out.text, parse_mode="HTML" if html else None, **kwargs)
            except BadRequest as exc:
                if not (html and _is_parse_error(exc)):
                    raise
                await bot.edit_message_text(text=html_to_plain(out.text), parse_mode=None, **kwargs)
        except BadRequest as exc:
            msg = exc.message.lower()
            if "not modified" in msg:
                return out.edit_of
            if "no text in the message" in msg:
                # the copy is a file with a caption: edit the caption instead
                return await self._edit_caption(bot, out, kwargs, html)
            if "to edit not found" in msg or "can't be edited" in msg or "message_id_invalid" in msg:
                # the original is gone or too old: post the new text as a reply to it instead
                note = "(edited) "
                return await self._send_text(bot, (escape_html(note) if html else note) + out.text, common,
                                             html, preview, out.edit_of)
            raise
        return out.edit_of

    async def _edit_caption(self, bot: Bot, out: Outbound, kwargs: dict[str, Any], html: bool) -> str:
        assert out.edit_of is not None
        args = {"chat_id": kwargs["chat_id"], "message_id": kwargs["message_id"]}
        caption = out.text
        if utf16_len(html_to_plain(caption) if html else caption) > MAX_CAPTION:
            caption = truncate_utf16(html_to_plain(caption) if html else caption, MAX_CAPTION)
            html = False
        try:
            try:
                await bot.edit_message_caption(caption=caption, parse_mode="HTML" if html else None, **args)
            except BadRequest as exc:
                if not (html and _is_parse_error(exc)):
                    raise
                await bot.edit_message_caption(caption=html_to_plain(caption), parse_mode=None, **args)
        except BadRequest as exc:
            if "not modified" not in exc.message.lower():
                raise
        return out.edit_of

    def _delivery_error(self, exc: TelegramError, chat: str) -> DeliveryError:
        desc = self._scrub(exc.message)
        if isinstance(exc, RetryAfter):
            seconds = _retry_after_seconds(exc)
            return DeliveryError(f"telegram: flood control in chat {chat} (429), retry after {seconds:g}s",
                                 retry_after=seconds)
        if isinstance(exc, ChatMigrated):
            return DeliveryError(
                f"telegram: group {chat} was upgraded to a supergroup with id {exc.new_chat_id}; "
                f"update the route's chat", permanent=True)
        if isinstance(exc, Forbidden):
            return DeliveryError(f"telegram: not allowed to post in chat {chat}: {desc}", permanent=True)
        if isinstance(exc, BadRequest):
            return DeliveryError(f"telegram: chat {chat} refused the message: {desc}", permanent=True)
        if isinstance(exc, InvalidToken):
            self.set_state(GatewayState.BAD_CREDENTIALS, f"bot token rejected: check [gateways.{self.name}].token")
            return DeliveryError("telegram: bot token rejected (401)", retry_after=60.0)
        if isinstance(exc, TimedOut):
            return DeliveryError(f"telegram: timed out sending to chat {chat}")
        if isinstance(exc, NetworkError):
            return DeliveryError(f"telegram: {desc}")
        return DeliveryError(f"telegram: {desc}")

    # ------------------------------------------------------------------ files
    @property
    def _fetch_policy(self) -> FetchPolicy:
        """File downloads go to Telegram's API host, or to the configured ``api_base`` (a local Bot API
        server); nowhere a redirect may point."""
        return FetchPolicy(hosts=(TELEGRAM_API_HOST,), base=self.config.api_base)

    async def fetch_attachment(self, att: Attachment, max_bytes: int | None = None) -> bytes:
        """Download a ``tgfile:<this gateway>:<file_id>`` attachment (getFile + file download),
        capped at ``download_max_bytes`` (and ``max_bytes``). The download URL (it holds the
        token) never leaves here."""
        prefix = f"tgfile:{self.name}:"
        if not att.url or not att.url.startswith(prefix):
            raise DeliveryError("telegram: not a file of this bot", permanent=True)
        file_id = att.url[len(prefix):]
        limit = self.config.download_max_bytes if max_bytes is None else min(max_bytes,
                                                                             self.config.download_max_bytes)
        if att.size is not None and att.size > limit:
            raise DeliveryError(f"telegram: file {att.name!r} is larger than download_max_bytes", permanent=True)
        bot = self._ensure_bot()
        try:
            f = TgFile.model_validate((await bot.get_file(file_id)).to_dict())
        except TelegramError as exc:
            raise self._delivery_error(exc, "(getFile)") from None
        if f.file_size is not None and f.file_size > limit:
            raise DeliveryError(f"telegram: file {att.name!r} is larger than download_max_bytes", permanent=True)
        path = f.file_path or ""
        marker = f"/file/bot{PLACEHOLDER}/"
        if marker in path:
            path = path.split(marker, 1)[1]
        if not _safe_file_path(path):
            # a path from getFile goes after the token in the URL: never out of /file/bot<token>/
            raise DeliveryError(f"telegram: file {att.name!r} has an unusable file path", permanent=True)
        url = f"{self.config.api_base}/file/bot{self._token}/{urllib.parse.quote(path, safe='/')}"
        try:
            async with safe_get(self.ctx.http, url, policy=self._fetch_policy,
                                what=f"telegram: file {att.name!r}") as resp:
                if resp.status != 200:
                    raise DeliveryError(f"telegram: file download failed (HTTP {resp.status})",
                                        permanent=resp.status in (400, 404))
                return await read_capped(resp, limit, f"telegram: file {att.name!r}")
        except DeliveryError:
            raise
        except Exception as exc:  # noqa: BLE001 - aiohttp errors may carry the URL: never surface them
            raise DeliveryError(f"telegram: file download failed ({type(exc).__name__})") from None

    # ------------------------------------------------------------------ operations
    async def check(self) -> list[str]:
        problems: list[str] = []
        bot = self._ensure_bot()
        try:
            me = self._me = await self._get_me()
        except InvalidToken:
            return ["the bot token was rejected by Telegram; get a new one from @BotFather"]
        except TelegramError as exc:
            return [f"Bot API unreachable ({self._scrub(exc.message)})"]
        group_bindings = [b for b in self.ctx.bindings if b.inbound and _is_group(b.address.chat)]
        if group_bindings and not me.can_read_all_group_messages:
            problems.append(
                f"privacy mode is on for @{me.username}: in groups it only sees commands "
                f"and replies to itself. Disable it (@BotFather /setprivacy -> Disable, then re-add the bot) "
                f"or make the bot an admin of: " + ", ".join(sorted({b.address.chat for b in group_bindings})))
        try:
            info = WebhookInfo.model_validate((await bot.get_webhook_info()).to_dict())
        except TelegramError:
            info = None
        if info is not None:
            if self.config.mode == "polling" and info.url:
                problems.append("a webhook is set for this bot; polling mode deletes it "
                                "at start (another deployment using it will stop receiving updates)")
            if self.config.mode == "webhook":
                if not self.webhook_url:
                    problems.append("mode = \"webhook\" without public_url here or in [server]: start() refuses")
                if self.webhook_url and not self.webhook_url.startswith("https://"):
                    problems.append("public_url must be https:// for Telegram webhooks")
                if info.url and info.url != self.webhook_url:
                    problems.append("the webhook points elsewhere; start() re-registers it")
                if info.last_error_message:
                    problems.append(f"Telegram's last webhook error: "
                                    f"{self._scrub(info.last_error_message)}")
        for chat in sorted({b.address.chat for b in self.ctx.bindings}):
            try:
                c = Chat.model_validate(await self._raw("getChat", chat_id=_chat_id(chat)))
            except (BadRequest, Forbidden):
                problems.append(f"chat {chat} not found or the bot is not a member")
                continue
            except (TelegramError, ValidationError):
                continue
            threaded = [b for b in self.ctx.bindings if b.address.chat == chat and (
                b.address.thread or coerce_options(b.options).message_thread_id)]
            if threaded and not c.is_forum:
                problems.append(f"chat {chat} has topics bound but is not a forum")
        return problems


MAX_UPDATE_ID = 2**53  # update ids are sequential 32-bit-ish integers; anything larger cannot be an offset


def _update_batch(updates: Any) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The ``(update_id, update)`` pairs of a getUpdates answer that can be confirmed by offset, and how
    many entries were not (not an object, no integer ``update_id``, or one out of range)."""
    if not isinstance(updates, list):
        return [], 1
    batch = [(u["update_id"], u) for u in updates
             if isinstance(u, dict) and type(u.get("update_id")) is int and 0 <= u["update_id"] < MAX_UPDATE_ID]
    return batch, len(updates) - len(batch)


def _safe_file_path(path: str) -> bool:
    """A ``getFile`` path that stays inside ``/file/bot<token>/``: relative, no ``..`` or empty segment,
    no backslash, query, fragment or control character."""
    if not path or path.startswith("/") or len(path) > 1024:
        return False
    if any(c in path for c in "\\?#%") or not path.isprintable():
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))
