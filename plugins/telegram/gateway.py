"""TelegramGateway: lifecycle (getMe, setWebhook, the polling lease, start/stop) and wiring only.

The parts: ingress.py (webhook route, long polling, submit), updates.py (update -> Message),
egress.py (Outbound -> Bot API calls), files.py (uploads, getFile downloads), checks.py (``check``),
format.py, config.py, wire.py, transport.py. Only translation lives in this plugin: routing,
allow-lists, dedup, retries, rate limiting, splitting and attribution are the core's; this class
declares rate limits, renders text as HTML and maps Bot API failures to ``DeliveryError``
(``retry_after`` from a 429 pauses only that chat).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from claudemesh_gateway import (
    Address,
    Attachment,
    Capabilities,
    ConfigError,
    DeliveryError,
    Gateway,
    GatewayContext,
    GatewayState,
    Message,
    Outbound,
    RateLimit,
    SendResult,
)
from claudemesh_gateway.plugins.telegram.checks import problems
from claudemesh_gateway.plugins.telegram.config import MB, TelegramBindingOptions, TelegramConfig
from claudemesh_gateway.plugins.telegram.egress import Egress, delivery_error, rate_limits, render_text
from claudemesh_gateway.plugins.telegram.files import download
from claudemesh_gateway.plugins.telegram.ingress import Ingress
from claudemesh_gateway.plugins.telegram.transport import (
    AiohttpRequest,
    make_bot,
    protect_ptb_logs,
    retry_after_seconds,
    scrub,
)
from claudemesh_gateway.plugins.telegram.wire import ALLOWED_UPDATES, User
from telegram import Bot, BotCommand
from telegram.error import BadRequest, InvalidToken, RetryAfter, TelegramError

log = logging.getLogger(__name__)

__all__ = ["TelegramGateway"]

# The core's in-chat commands (docs/contracts.md), shown in Telegram's "/" menu.
BOT_COMMANDS = (
    ("topics", "the mesh topics and tags this chat is bridged to"),
    ("peers", "who is on the mesh right now"),
    ("status", "gateway and mesh status"),
    ("dm", "<peer> <text>: direct message to a mesh peer"),
    ("help", "what this bot does"),
)


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
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._webhook_set = False
        self._background: set[asyncio.Task[Any]] = set()
        self._ingress = Ingress(name, config, ctx, bot=self._ensure_bot, scrub=self._scrub, spawn=self._spawn)
        self._egress = Egress(name, config)

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

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro, name=f"telegram:{self.name}:{what}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_ready(self, limit_s: float = 10.0) -> None:
        """Wait until ingress is up (webhook registered, or the first getUpdates answered)."""
        await asyncio.wait_for(self._ingress.ready.wait(), limit_s)

    # ------------------------------------------------------------------ ingress.Lifecycle
    @property
    def stopping(self) -> bool:
        return self._stopping

    def backoff(self, attempt: int, cap: float | None = None) -> float:
        cap = self.backoff_max if cap is None else cap
        base = min(cap, self.backoff_initial * (2 ** min(attempt, 16)))
        return base * random.uniform(0.5, 1.0)

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def retry_later(self, exc: TelegramError, attempt: int) -> bool:
        """Wait before repeating a Bot API call that failed with ``exc``: Telegram's flood wait, else
        a backoff (the state says why). True when it backed off (the attempt counts)."""
        if isinstance(exc, RetryAfter):
            await self.pause(retry_after_seconds(exc))
            return False
        self.set_state(GatewayState.TRANSIENT_DISCONNECT, self._scrub(exc.message))
        await self.pause(self.backoff(attempt))
        return True

    def bad_token(self, what: str) -> None:
        self.set_state(GatewayState.BAD_CREDENTIALS,
                       f"bot token rejected by Telegram: check [gateways.{self.name}].token")
        log.error("telegram %s: %s", self.name, what)

    async def poll_lease(self) -> bool:
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
        self._ingress.ready.clear()
        self.set_state(GatewayState.STARTING)
        self._task = asyncio.create_task(self._run(), name=f"telegram:{self.name}:ingress")

    async def stop(self) -> None:
        self._stopping = True
        self._started = False
        task, self._task = self._task, None
        if task is not None and not task.done():
            await self._ingress.drain(self.drain_timeout)
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
                    await self._ingress.poll(self._ensure_bot(), self)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # boundary of the background task: log, back off, restart
                log.exception("telegram %s: ingress failed unexpectedly; restarting it", self.name)
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, "ingress failed unexpectedly; restarting")
                await self.pause(self.backoff(attempt))
                attempt += 1

    async def _hello(self) -> bool:
        """getMe until it works. False when the token is bad (retries would not help)."""
        attempt = 0
        while not self._stopping:
            try:
                me = self._ingress.me = await self._get_me()
                log.info("telegram %s: connected as @%s (id %s)", self.name, me.username, me.id)
                if self.config.set_commands:
                    await self._set_commands()
                return True
            except InvalidToken:
                self.bad_token("bot token rejected by Telegram (401/404)")
                return False
            except TelegramError as exc:
                if await self.retry_later(exc, attempt):
                    attempt += 1
        return False

    async def _set_commands(self) -> None:
        """Register the core's in-chat commands in Telegram's command menu (best effort)."""
        try:
            await self._ensure_bot().set_my_commands([BotCommand(c, d) for c, d in BOT_COMMANDS])
        except TelegramError as exc:
            log.info("telegram %s: setMyCommands failed (%s); the menu stays as it was",
                     self.name, self._scrub(exc.message))

    async def _get_me(self) -> User:
        return User.model_validate((await self._ensure_bot().get_me()).to_dict())

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
                self._ingress.ready.set()
                return
            except InvalidToken:
                self.set_state(GatewayState.BAD_CREDENTIALS, "bot token rejected by Telegram")
                return
            except BadRequest as exc:  # e.g. bad URL / port: an operator error, retried slowly
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, f"setWebhook refused: {self._scrub(exc.message)}")
                await self.pause(self.backoff(attempt, self.conflict_backoff_max))
            except TelegramError as exc:
                await self.retry_later(exc, attempt)
            attempt += 1

    # ------------------------------------------------------------------ the parts
    def web_routes(self) -> Sequence[web.RouteDef]:
        return [web.post("/webhook", self._webhook)]

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        return await self._ingress.webhook(request, stopping=self._stopping)

    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        return rate_limits(self.name, self.config.rate, to)

    def render_text(self, message: Message, text: str, out_options: Mapping[str, Any]) -> str | None:
        """HTML mode: everything escaped, then the safe Markdown subset as tags (format.render)."""
        return render_text(self.config, text, out_options)

    async def send(self, out: Outbound) -> SendResult:
        try:
            return await self._egress.send(self._ensure_bot(), out)
        except TelegramError as exc:
            raise self._delivery_error(exc, out.to.chat) from None

    async def fetch_attachment(self, att: Attachment, max_bytes: int | None = None) -> bytes:
        """A file of this bot (``tgfile:<gateway>:<file_id>``), downloaded by files.download."""
        try:
            return await download(self._ensure_bot(), self.ctx.http, self.config, self.name, att, max_bytes)
        except TelegramError as exc:
            raise self._delivery_error(exc, "(getFile)") from None

    def _delivery_error(self, exc: TelegramError, chat: str) -> DeliveryError:
        if isinstance(exc, InvalidToken):
            self.set_state(GatewayState.BAD_CREDENTIALS, f"bot token rejected: check [gateways.{self.name}].token")
        return delivery_error(exc, chat, self._scrub(exc.message))

    # ------------------------------------------------------------------ operations
    async def check(self) -> list[str]:
        bot = self._ensure_bot()
        try:
            me = self._ingress.me = await self._get_me()
        except InvalidToken:
            return ["the bot token was rejected by Telegram; get a new one from @BotFather"]
        except TelegramError as exc:
            return [f"Bot API unreachable ({self._scrub(exc.message)})"]
        return await problems(bot, me, self.config, self.ctx.bindings, self.webhook_url, self._scrub)
