"""Slack gateway: Socket Mode (default) or Events API ingress, Web API egress.

Translation only. Routing, retries, rate limiting, splitting and attribution are the
core's. This module is the :class:`Gateway` and its lifecycle (start, stop, the Socket Mode
lease); the work is done by its parts: :mod:`.api` (Web API calls and their errors),
:mod:`.ingress` (events -> Message; acked only after the core's commit), :mod:`.socketmode`,
:mod:`.egress` (Outbound -> chat.*), :mod:`.files`, :mod:`.threads` and :mod:`.history`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from claudemesh_gateway import (
    Address,
    Attachment,
    Capabilities,
    Gateway,
    GatewayState,
    Message,
    Outbound,
    RateLimit,
    SendResult,
    StartupError,
)
from claudemesh_gateway.plugins.slack import mrkdwn
from claudemesh_gateway.plugins.slack.api import AuthFailed, SlackApi
from claudemesh_gateway.plugins.slack.config import SlackBindingOptions, SlackConfig
from claudemesh_gateway.plugins.slack.egress import Egress, rate_limits
from claudemesh_gateway.plugins.slack.files import SlackFiles
from claudemesh_gateway.plugins.slack.history import CURSORS_KEY as HISTORY_CURSORS_KEY
from claudemesh_gateway.plugins.slack.history import HistoryCatchup
from claudemesh_gateway.plugins.slack.ingress import Ingress
from claudemesh_gateway.plugins.slack.socketmode import SocketMode
from claudemesh_gateway.plugins.slack.threads import ThreadMap

__all__ = ["SlackGateway"]

log = logging.getLogger(__name__)

STANDBY_DETAIL = "standby: another replica holds the Socket Mode connection"


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
        self.started = False
        # who we are in Slack (auth.test; app_id from the socket hello or events): recognises our own posts
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self.app_id: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.api = SlackApi(name, config, self.set_state)
        self.resolver = mrkdwn.NameResolver(self.api.user_name, self.api.channel_name, ttl=config.name_cache_ttl)
        self.threads = ThreadMap(name, ctx)
        self.files = SlackFiles(self)
        self._history = HistoryCatchup(self) if config.history_catchup else None
        self.ingress = Ingress(self, self._history)
        self.socket_mode = SocketMode(self, self._history)
        self.egress = Egress(self)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.started:
            return
        try:
            await self._start()
        except StartupError:
            self.started = False
            raise

    async def _start(self) -> None:
        self.started = True
        self.socket_mode.hellos = 0
        cfg = self.config
        await self.threads.load()
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
        if cfg.mode == "events" and self.ingress.verifier is None:
            raise StartupError(f'gateway {self.name}: mode = "events" needs signing_secret')
        self.set_state(GatewayState.STARTING)
        self.api.open(self.ctx.http)
        try:
            await self._connect()
        except AuthFailed as exc:
            self.set_state(GatewayState.BAD_CREDENTIALS, exc.error)
            raise StartupError(f"gateway {self.name}: Slack refused the token ({exc.error})") from None
        except Exception as exc:  # noqa: BLE001 - network trouble at boot: keep trying in the background
            self.set_state(GatewayState.TRANSIENT_DISCONNECT, type(exc).__name__)
            self.spawn(self._bootstrap_loop(), "bootstrap")

    async def _connect(self) -> None:
        await self._auth()
        if self.config.mode == "socket":
            await self._socket_mode()
        else:
            self.set_state(GatewayState.CONNECTED, "events api")
            if self._history is not None:
                self._history.connected(reconnect=False)

    async def _bootstrap_loop(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                await self._connect()
                return
            except AuthFailed as exc:
                self.set_state(GatewayState.BAD_CREDENTIALS, exc.error)
                log.error("gateway %s: Slack refused the token (%s); not retrying", self.name, exc.error)
                return
            except Exception as exc:  # noqa: BLE001
                self.set_state(GatewayState.TRANSIENT_DISCONNECT, type(exc).__name__)
                delay = min(delay * 2, 60.0)

    async def _auth(self) -> None:
        resp = await self.api.setup_call("auth_test")
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
            await self.socket_mode.open()
        else:
            self.set_state(GatewayState.CONNECTED, STANDBY_DETAIL)
        self.spawn(self._socket_lease_loop(), "socket-lease")

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
        while self.started:
            await asyncio.sleep(self.standby_interval)
            held = await self._socket_lease()
            if held and self.socket_mode.client is None:
                log.info("gateway %s: taking over the Socket Mode connection", self.name)
                self.set_state(GatewayState.STARTING, "taking over Socket Mode from another replica")
                try:
                    await self.socket_mode.open()
                except Exception as exc:  # noqa: BLE001 - try again next round
                    self.set_state(GatewayState.TRANSIENT_DISCONNECT, type(exc).__name__)
            elif not held and self.socket_mode.client is not None:
                log.warning("gateway %s: lost the Socket Mode lease; closing the socket", self.name)
                self._cancel(":connect")
                await self.socket_mode.close()
                self.set_state(GatewayState.CONNECTED, STANDBY_DETAIL)

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        self._cancel(":bootstrap", ":connect", ":socket-lease")
        if self._history is not None:
            self._history.cancel()  # sleeping on its rate bucket, maybe for a minute
        await self.socket_mode.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.resolver.aclose()
        await self.threads.save()
        if self._history is not None:
            await self._history.save()
        self.set_state(GatewayState.STOPPED)

    def spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this gateway (``stop`` waits for it, or cancels it)."""
        task = asyncio.create_task(coro, name=f"slack:{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _cancel(self, *whats: str) -> None:
        for task in list(self._tasks):
            if task.get_name().endswith(whats):
                task.cancel()

    async def check(self) -> list[str]:
        """Config remarks, then ``auth.test``: the token, and the scopes Slack says it has
        (``x-oauth-scopes``) against what the bindings and options need."""
        warnings = []
        if self.config.mode == "events" and self.config.app_token is not None:
            warnings.append(f'{self.name}: app_token is unused in mode = "events"')
        return [*warnings, *await self.api.check_token(self.ctx.http, list(self.ctx.bindings))]

    # -- the parts ---------------------------------------------------------------------------
    def web_routes(self) -> Sequence[web.RouteDef]:
        return self.ingress.routes()

    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        return rate_limits(self.name, self.config.rate, to)

    def render_text(self, message: Message, text: str, out_options: Mapping[str, Any]) -> str | None:
        return mrkdwn.escape(text)

    async def send(self, out: Outbound) -> SendResult:
        return await self.egress.send(out)

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        return await self.files.fetch(attachment, max_bytes)
