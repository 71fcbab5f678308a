"""Socket Mode: one websocket from ``apps.connections.open``, envelopes into the ingress path.

An envelope is acked only after its event was submitted (see :mod:`.ingress`); one that can
never be read is acked and skipped, or Slack would redeliver it on every connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from claudemesh_gateway import GatewayState
from claudemesh_gateway.plugins.slack.api import BAD_CREDENTIALS, error_code
from claudemesh_gateway.plugins.slack.ingress import event_callback_problem
from claudemesh_gateway.plugins.slack.wire import SlashCommand
from pydantic import ValidationError
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

if TYPE_CHECKING:
    from claudemesh_gateway.plugins.slack.gateway import SlackGateway
    from claudemesh_gateway.plugins.slack.history import HistoryCatchup

__all__ = ["SocketMode", "envelope_problem"]

log = logging.getLogger(__name__)


class _SocketClient(SocketModeClient):
    """The SDK's Socket Mode client, except that a refused app token ends it.

    On every reconnect the SDK asks ``apps.connections.open`` for a fresh URL and, when
    that fails, logs and tries again forever, so an app token revoked after start would
    spin silently. Here a credentials error closes the client and tells the gateway,
    which reports ``bad_credentials`` the same way a refused token at start does."""

    def __init__(self, *args: Any, on_refused: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_refused = on_refused

    async def issue_new_wss_url(self) -> str:
        try:
            return await super().issue_new_wss_url()
        except SlackApiError as exc:
            err = error_code(exc)
            if err in BAD_CREDENTIALS:
                self.closed = True  # stops connect() and the session monitor from retrying
                self.auto_reconnect_enabled = False
                self._on_refused(f"app_token: {err}")
            raise


def envelope_problem(req: SocketModeRequest) -> str:
    """Why a Socket Mode envelope's payload can never be read ("" when it can): checked before
    anything is submitted, so only a payload that will never parse is skipped."""
    if req.type == "events_api":
        return event_callback_problem(req.payload)
    if req.type == "slash_commands":
        try:
            SlashCommand.model_validate(req.payload)
        except ValidationError as exc:
            return f"{exc.error_count()} errors"
    return ""


class SocketMode:
    """The Socket Mode connection of one gateway (``client``: None while there is none).
    ``hellos`` counts hellos since start: every one after the first is a reconnect."""

    def __init__(self, gateway: SlackGateway, history: HistoryCatchup | None) -> None:
        self.gw = gateway
        self.history = history
        self.client: SocketModeClient | None = None
        self.hellos = 0

    async def open(self) -> None:
        """Ask for a websocket URL and connect to it (in a task: the SDK retries by itself)."""
        gw = self.gw
        assert gw.api.web is not None and gw.config.app_token is not None
        app_token = gw.config.app_token.get_secret_value()
        opened = await gw.api.setup_call("apps_connections_open", refused_prefix="app_token: ", app_token=app_token)
        client = _SocketClient(
            app_token=app_token,
            on_refused=self._app_token_refused,
            web_client=gw.api.web,
            auto_reconnect_enabled=True,
            ping_interval=gw.config.ping_interval,
            logger=logging.getLogger(f"{__name__}.socket"),
        )
        client.message_listeners.append(self._on_message)
        client.socket_mode_request_listeners.append(self._on_request)
        client.on_close_listeners.append(self._on_close)
        client.wss_uri = opened["url"]
        self.client = client
        # connect() retries by itself until it succeeds; reconnects on close/disconnect envelopes
        gw.spawn(client.connect(), "connect")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _on_message(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        gw = self.gw
        kind = message.get("type")
        envelope_id = message.get("envelope_id")
        if "payload" in message and not isinstance(message["payload"], dict | str):
            # slack_sdk cannot make a request of it (an ERROR traceback, and it is never acked, so it
            # would come back on every connection): skip it here, with one line, and ack it
            message.pop("payload")
            log.warning("gateway %s: skipped a Socket Mode envelope whose payload is not an object", gw.name)
            if isinstance(envelope_id, str) and envelope_id:
                await self._ack(client, envelope_id)
            return
        if kind == "hello":
            # synchronous up to here: the gaps are taken before this socket's first envelope
            self.hellos += 1
            app_id = (message.get("connection_info") or {}).get("app_id")
            if isinstance(app_id, str) and app_id:
                gw.app_id = app_id
            gw.set_state(GatewayState.CONNECTED, "socket mode")
            if self.history is not None and gw.started:
                self.history.connected(reconnect=self.hellos > 1)
        elif kind == "disconnect":
            gw.set_state(GatewayState.TRANSIENT_DISCONNECT, str(message.get("reason") or "disconnect"))

    def _app_token_refused(self, error: str) -> None:
        gw = self.gw
        if gw.state == GatewayState.BAD_CREDENTIALS:
            return
        gw.set_state(GatewayState.BAD_CREDENTIALS, error)
        log.error(
            "gateway %s: Slack refused the app token while reconnecting (%s); Socket Mode stopped, "
            "fix [gateways.%s].app_token and reload",
            gw.name,
            error,
            gw.name,
        )

    async def _on_close(self, message: Any) -> None:
        if self.gw.started and self.gw.state != GatewayState.BAD_CREDENTIALS:
            self.gw.set_state(GatewayState.TRANSIENT_DISCONNECT, "socket closed")

    async def _on_request(self, client: Any, req: SocketModeRequest) -> None:
        if not self.gw.started:
            return  # stopping: leave it un-acked, Slack redelivers it to the next connection
        # tracked, so stop() waits for an envelope that is being submitted
        await asyncio.shield(self.gw.spawn(self._process(client, req), "envelope"))

    async def _process(self, client: Any, req: SocketModeRequest) -> None:
        # Submit first, ack after: an envelope we fail to submit is left un-acked, so
        # Slack redelivers it; a redelivery is deduplicated by the core (stable Message.id).
        gw = self.gw
        problem = envelope_problem(req)
        if problem:
            # it will never parse: acked and skipped, or Slack would redeliver it forever
            log.warning("gateway %s: skipped a Socket Mode %s envelope that does not parse (%s)",
                        gw.name, req.type, problem)
            await self._ack(client, req.envelope_id)
            return
        try:
            if req.type == "events_api":
                await gw.ingress.handle_event_callback(req.payload)
            elif req.type == "slash_commands":
                await gw.ingress.handle_slash_command(SlashCommand.model_validate(req.payload))
        except Exception:
            log.exception("gateway %s: could not submit socket envelope (left un-acked)", gw.name)
            return
        await self._ack(client, req.envelope_id)

    async def _ack(self, client: Any, envelope_id: str) -> None:
        try:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=envelope_id))
        except Exception as exc:  # noqa: BLE001 - socket gone: Slack redelivers, the core dedups
            log.info(
                "gateway %s: could not ack envelope (%s); Slack will redeliver", self.gw.name, type(exc).__name__
            )
