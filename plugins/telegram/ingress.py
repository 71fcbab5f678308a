"""Where Telegram updates come in: the webhook route, long polling (getUpdates under the polling
lease, each batch's offset saved once the core took it), and the hand-over to ``ctx.submit``
(updates.py makes the Message) or a drop, with the reply to a chat that may not write."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from claudemesh_gateway import GatewayContext, GatewayState, Message, MessageDropped, SubmitResult
from claudemesh_gateway.plugins.telegram.config import MB, TelegramConfig, coerce_options
from claudemesh_gateway.plugins.telegram.egress import reply_parameters
from claudemesh_gateway.plugins.telegram.transport import raw_call
from claudemesh_gateway.plugins.telegram.updates import (
    chat_matches,
    inbound_bindings,
    sender_allowed,
    thread_of,
    to_message,
)
from claudemesh_gateway.plugins.telegram.wire import ALLOWED_UPDATES, Chat, Update, User
from claudemesh_gateway.webhooks import MalformedHeader, header_value, read_json_object
from pydantic import ValidationError
from telegram import Bot
from telegram.error import Conflict, InvalidToken, RetryAfter, TelegramError

log = logging.getLogger(__name__)

__all__ = [
    "MAX_UPDATE_BYTES",
    "MAX_UPDATE_ID",
    "SECRET_HEADER",
    "Ingress",
    "Lifecycle",
    "update_batch",
]

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1 * MB  # a webhook update (Telegram's are a few KiB; files arrive as references)
MAX_UPDATE_ID = 2**53  # update ids are sequential 32-bit-ish integers; anything larger cannot be an offset
UNAUTHORISED_REPLY_EVERY_S = 3600.0


def update_batch(updates: Any) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The ``(update_id, update)`` pairs of a getUpdates answer that can be confirmed by offset, and how
    many entries were not (not an object, no integer ``update_id``, or one out of range)."""
    if not isinstance(updates, list):
        return [], 1
    batch = [(u["update_id"], u) for u in updates
             if isinstance(u, dict) and type(u.get("update_id")) is int and 0 <= u["update_id"] < MAX_UPDATE_ID]
    return batch, len(updates) - len(batch)


class Lifecycle(Protocol):
    """What the polling loop needs of the gateway that runs it (``gateway.TelegramGateway``)."""

    standby_interval: float
    conflict_backoff_max: float

    @property
    def stopping(self) -> bool: ...

    @property
    def state(self) -> GatewayState: ...

    def set_state(self, state: GatewayState, detail: str = "") -> None: ...

    async def poll_lease(self) -> bool: ...

    def backoff(self, attempt: int, cap: float | None = None) -> float: ...

    async def pause(self, seconds: float) -> None: ...

    async def retry_later(self, exc: TelegramError, attempt: int) -> bool: ...

    def bad_token(self, what: str) -> None: ...


class Ingress:
    """The updates of one bot, from the webhook or from polling, handed to ``ctx.submit``."""

    def __init__(self, gateway: str, config: TelegramConfig, ctx: GatewayContext, *, bot: Callable[[], Bot],
                 scrub: Callable[[str], str], spawn: Callable[[Any, str], None]) -> None:
        self.gateway = gateway
        self.config = config
        self.ctx = ctx
        self._bot, self._scrub, self._spawn = bot, scrub, spawn
        self.me: User | None = None  # getMe's answer: our own messages are never relayed back
        self.ready = asyncio.Event()  # set once the webhook is registered or getUpdates answered
        self._in_batch = False
        self._batch_done = asyncio.Event()
        self._unauth_replied: dict[str, float] = {}

    # ------------------------------------------------------------------ webhook
    async def webhook(self, request: web.Request, *, stopping: bool) -> web.StreamResponse:
        # 1. authenticate before reading or parsing anything
        expected = self.config.webhook_secret
        if self.config.mode != "webhook" or expected is None:
            return web.Response(status=404)
        try:
            got = header_value(request.headers, SECRET_HEADER)
        except MalformedHeader as exc:
            log.warning("telegram %s: webhook call rejected: %s", self.gateway, exc)
            return web.Response(status=401, text="malformed secret token")
        if got is None:
            return web.Response(status=401, text="missing secret token")
        if not hmac.compare_digest(got.encode(), expected.get_secret_value().encode()):
            log.warning("telegram %s: webhook call with a wrong secret token rejected", self.gateway)
            return web.Response(status=403, text="bad secret token")
        if stopping:
            return web.Response(status=503)  # Telegram retries later; nothing lost
        # 2. parse: 400 for a body that is not one JSON object (or nests absurdly deep), 413 above the cap
        data = await read_json_object(request, max_bytes=MAX_UPDATE_BYTES)
        # 3. hand to the core; acknowledge only once it is durable
        try:
            await self.handle_update(data)
        except Exception as exc:  # noqa: BLE001 (boundary)
            log.warning("telegram %s: submit failed for a webhook update (%s); asking Telegram to retry",
                        self.gateway, type(exc).__name__)
            return web.Response(status=503)
        return web.Response(status=200)

    # ------------------------------------------------------------------ polling
    async def drain(self, timeout: float) -> None:
        """Let an update batch in flight finish (submit + offset save), for at most ``timeout``."""
        if not self._in_batch:
            return
        try:
            await asyncio.wait_for(self._batch_done.wait(), timeout)
        except TimeoutError:
            log.warning("telegram %s: stop while an update batch is in flight", self.gateway)

    async def poll(self, bot: Bot, host: Lifecycle) -> None:
        """getUpdates until ``host`` stops, while this replica holds the polling lease (standby
        otherwise); 409 Conflicts, flood waits and network errors are waited out."""
        attempt = 0
        webhook_cleared = False
        drop_pending = self.config.drop_pending_updates  # only once: never drop on a re-clear after a 409
        offset = await self._stored_offset()
        standby = False
        while not host.stopping:
            if not await host.poll_lease():  # another replica polls this bot: reading too would 409
                if not standby:
                    standby = True
                    host.set_state(GatewayState.CONNECTED, "standby: another replica polls this bot")
                    self.ready.set()
                await host.pause(host.standby_interval)
                continue
            if standby:  # taken over: the last owner advanced the offset
                standby = False
                host.set_state(GatewayState.STARTING, "taking over polling from another replica")
                offset = await self._stored_offset()
            try:
                if not webhook_cleared:
                    # polling and a webhook are mutually exclusive (409 otherwise)
                    await bot.delete_webhook(drop_pending_updates=drop_pending)
                    webhook_cleared, drop_pending = True, False
                updates = await raw_call(
                    bot, "getUpdates", offset=offset, timeout=self.config.poll_timeout,
                    allowed_updates=list(ALLOWED_UPDATES), read_timeout=self.config.poll_timeout + 10.0,
                )
            except InvalidToken:
                host.bad_token("bot token rejected while polling; polling stopped")
                return
            except Conflict:
                detail = ("409 Conflict: another process is polling this bot token, or a webhook is set; "
                          "run one instance per token (or use mode = \"webhook\")")
                host.set_state(GatewayState.BAD_CREDENTIALS, detail)
                log.error("telegram %s: %s", self.gateway, detail)
                webhook_cleared = False
                await host.pause(host.backoff(attempt, host.conflict_backoff_max))
                attempt += 1
                continue
            except TelegramError as exc:  # 429, NetworkError, TimedOut, 5xx
                if not isinstance(exc, RetryAfter):
                    log.warning("telegram %s: getUpdates failed (%s); retrying", self.gateway,
                                self._scrub(exc.message))
                if await host.retry_later(exc, attempt):
                    attempt += 1
                continue
            if host.state != GatewayState.CONNECTED:
                host.set_state(GatewayState.CONNECTED, "polling")
            attempt = 0
            self.ready.set()
            if not updates:
                continue
            batch, skipped = update_batch(updates)
            if skipped:
                # not updates Telegram could send: skipped (the offset moves past the good ones only)
                log.warning("telegram %s: skipped %d entries of a getUpdates answer without a usable "
                            "update_id", self.gateway, skipped)
            if not batch:
                await host.pause(host.backoff(attempt))  # nothing to confirm: do not ask again at once
                attempt += 1
                continue
            offset, failed = await self._process_batch(batch, offset)
            if failed:
                host.set_state(GatewayState.TRANSIENT_DISCONNECT, "core did not accept an update; retrying")
                await host.pause(host.backoff(1))

    async def _stored_offset(self) -> int | None:
        stored = await self.ctx.kv_get("offset")
        return int(stored) if stored is not None else None

    async def _process_batch(self, batch: Sequence[tuple[int, dict[str, Any]]],
                            offset: int | None) -> tuple[int | None, bool]:
        """Submit each update, then persist the offset past the last one that was submitted.
        Returns the new offset and whether the core failed to take an update (the rest waits).

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
                    await self.handle_update(data)
                except Exception as exc:  # noqa: BLE001 - the core could not take it: retry from here
                    log.warning("telegram %s: submit failed for update %s (%s); will retry",
                                self.gateway, update_id, type(exc).__name__)
                    failed = True
                    break
                new_offset = update_id + 1
            if new_offset != offset:
                await self.ctx.kv_set("offset", new_offset)
        finally:
            self._in_batch = False
            self._batch_done.set()
        return new_offset, failed

    # ------------------------------------------------------------------ one update
    async def handle_update(self, data: Mapping[str, Any]) -> SubmitResult | None:
        """One update -> at most one ``ctx.submit``. Raises only if the core failed to take it."""
        try:
            update = Update.model_validate(data)
        except ValidationError as exc:
            log.warning("telegram %s: skipping an update that does not parse (%d errors)",
                        self.gateway, exc.error_count())
            return None
        msg, edited = update.content()
        if msg is None:
            return None
        if msg.migrate_to_chat_id is not None:
            log.warning("telegram %s: group %s was upgraded to supergroup %s: update the routes to chat = \"%s\"",
                        self.gateway, msg.chat.id, msg.migrate_to_chat_id, msg.migrate_to_chat_id)
            return None
        if self.me is not None and msg.from_ is not None and msg.from_.id == self.me.id:
            return None  # our own message (never relayed back)
        bindings = inbound_bindings(self.gateway, self.ctx.bindings, msg.chat, thread_of(msg))
        message = to_message(self.gateway, self.me, update, msg, edited, bindings[0] if bindings else None,
                             dict(data))
        if message is None:
            return None  # service message or nothing we can carry
        if not bindings:
            if any(chat_matches(b.address.chat, msg.chat) for b in self.ctx.bindings):
                # a chat we post into (outbound-only, or another forum topic): no "unauthorised" reply
                self._drop(message, "no_inbound_binding", msg.chat, reply=False)
            else:
                self._drop(message, "unbound_chat", msg.chat)
            return None
        allowed = [b for b in bindings if sender_allowed(self.config, msg, coerce_options(b.options))]
        if not allowed:
            self._drop(message, "denied", msg.chat)
            return None
        return await self.ctx.submit(message)

    def _drop(self, message: Message, reason: str, chat: Chat, *, reply: bool = True) -> None:
        log.info("telegram %s: dropped a message from chat %s (%s)", self.gateway, chat.id, reason)
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
            await self._bot().send_message(chat_id=chat_id, text=text, reply_parameters=reply_parameters(native_id))
        except TelegramError as exc:
            log.info("telegram %s: could not send the unauthorised reply: %s", self.gateway,
                     self._scrub(exc.message))
