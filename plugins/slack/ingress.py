"""Slack events -> :class:`Message`: the Events API and slash commands over HTTP, and the one
inbound path that Socket Mode envelopes and the history catch-up use too.

Acknowledgement policy (both modes): an event is acknowledged (socket envelope ack or
HTTP 200) only *after* ``ctx.submit`` has returned, i.e. after the core's durable
commit. Name lookups are bounded (``lookup_timeout``) so this fits Slack's 3 s window.
A late or missing ack only makes Slack redeliver, and a redelivery carries the same
message ``ts`` and therefore the same :attr:`Message.id`, which the core deduplicates.
Acking first would lose the event if the process died before the commit.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aiohttp import web
from claudemesh_gateway import Address, Attachment, Message
from claudemesh_gateway.plugins.slack import mrkdwn
from claudemesh_gateway.plugins.slack.config import binding_options
from claudemesh_gateway.plugins.slack.files import file_ref
from claudemesh_gateway.plugins.slack.signature import SignatureVerifier
from claudemesh_gateway.plugins.slack.wire import EventCallback, MessageEvent, SlashCommand
from claudemesh_gateway.webhooks import parse_json_object, read_body
from pydantic import ValidationError

if TYPE_CHECKING:
    from claudemesh_gateway.plugins.slack.gateway import SlackGateway
    from claudemesh_gateway.plugins.slack.history import HistoryCatchup

__all__ = ["MAX_REQUEST_BYTES", "RELAYED_SUBTYPES", "Ingress", "event_callback_problem"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # an Events API or slash command request (aiohttp's default cap)
# Message subtypes that carry a person's words; everything else (joins, topic changes,
# bot_message, ...) is not relayed.
RELAYED_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
RECENT_EVENTS = 5000  # event ids remembered as submitted


def event_callback_problem(payload: Mapping[str, Any]) -> str:
    """Why ``payload`` is not an event_callback this gateway can read ("" when it is): checked
    before the event is handed on, so a malformed one is refused, not a failed submission."""
    try:
        cb = EventCallback.model_validate(payload)
        if cb.event.get("type") == "message":
            MessageEvent.model_validate(cb.event)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                         for e in exc.errors(include_url=False, include_input=False)[:3])
    return ""


class Ingress:
    """Inbound of one gateway; ``history`` (when catch-up is on) is told every channel ts seen."""

    def __init__(self, gateway: SlackGateway, history: HistoryCatchup | None) -> None:
        self.gw = gateway
        self.history = history
        secret = gateway.config.signing_secret
        self.verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
        self._recent: OrderedDict[str, None] = OrderedDict()  # event ids already submitted
        self._channel_locks: dict[str, asyncio.Lock] = {}

    # -- Events API / slash commands over HTTP -------------------------------------------------
    def routes(self) -> Sequence[web.RouteDef]:
        return (web.post("/events", self._http_events), web.post("/commands", self._http_commands))

    def _verified(self, request: web.Request, body: bytes) -> bool:
        return self.verifier is not None and self.verifier.verify(request.headers, body)

    async def _http_events(self, request: web.Request) -> web.StreamResponse:
        gw = self.gw
        body = await read_body(request, max_bytes=MAX_REQUEST_BYTES)  # 413 above; a disconnect is one line
        if not gw.started:
            return web.Response(status=503, text="not running")  # Slack retries later
        if not self._verified(request, body):
            log.warning("gateway %s: rejected Events API request with a bad or stale signature", gw.name)
            return web.Response(status=401, text="bad signature")
        payload = parse_json_object(body)  # 400: not JSON, not an object, nested absurdly deep
        kind = payload.get("type")
        if kind == "url_verification":
            return web.json_response({"challenge": str(payload.get("challenge", ""))})
        if kind != "event_callback":
            return web.Response(status=200)
        problem = event_callback_problem(payload)
        if problem:
            log.warning("gateway %s: refused an event_callback that does not parse (%s)", gw.name, problem)
            return web.json_response({"error": f"event_callback does not parse: {problem}"}, status=400)
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.debug(
                "gateway %s: Slack retry #%s (%s)",
                gw.name,
                retry,
                request.headers.get("X-Slack-Retry-Reason"),
            )
        task = gw.spawn(self.handle_event_callback(payload), "event")
        try:
            await asyncio.shield(task)  # a dropped connection does not abort the commit
        except Exception:
            log.exception("gateway %s: could not submit event; Slack will retry", gw.name)
            return web.Response(status=500)
        return web.Response(status=200)

    async def _http_commands(self, request: web.Request) -> web.StreamResponse:
        gw = self.gw
        body = await read_body(request, max_bytes=MAX_REQUEST_BYTES)
        if not gw.started:
            return web.Response(status=503, text="not running")
        if not self._verified(request, body):
            log.warning("gateway %s: rejected slash command with a bad or stale signature", gw.name)
            return web.Response(status=401, text="bad signature")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        cmd = SlashCommand.model_validate(form)
        task = gw.spawn(self.handle_slash_command(cmd), "command")
        try:
            await asyncio.shield(task)
        except Exception:
            log.exception("gateway %s: could not submit slash command", gw.name)
            return web.Response(status=500)
        return web.Response(status=200)  # empty: the core answers in the channel

    # -- inbound translation --------------------------------------------------------------------
    async def handle_event_callback(self, payload: Mapping[str, Any]) -> Any:
        """Translate one ``event_callback`` body and submit it. Returns the SubmitResult or None."""
        cb = EventCallback.model_validate(payload)
        if cb.event_id and cb.event_id in self._recent:
            return None
        if cb.event.get("type") != "message":
            return None
        if cb.api_app_id:
            self.gw.app_id = cb.api_app_id
        ev = MessageEvent.model_validate(cb.event)
        result = await self._submit_event(ev, cb)
        if cb.event_id:
            self._recent[cb.event_id] = None
            while len(self._recent) > RECENT_EVENTS:
                self._recent.popitem(last=False)
        return result

    async def submit_history(self, channel: str, message: Mapping[str, Any]) -> Any:
        """Submit one ``conversations.history`` message as if it had arrived as a live event:
        same filters, same :attr:`Message.id`, so the core drops whatever also came live."""
        ev = MessageEvent.model_validate({**message, "type": "message", "channel": channel})
        cb = EventCallback(type="event_callback", team_id=self.gw.team_id or "", api_app_id=self.gw.app_id or "")
        return await self._submit_event(ev, cb)

    async def handle_slash_command(self, cmd: SlashCommand) -> Any:
        """``/mesh <cmd> args`` -> an in-chat command message (the core answers in the channel)."""
        gw = self.gw
        text = cmd.text.strip()
        if not text:
            text = "help"
        if not text.startswith("/"):
            text = "/" + text
        if cmd.user_id and cmd.user_name:
            gw.resolver.prime_user(cmd.user_id, cmd.user_name)
        team = cmd.team_id or gw.team_id or "-"
        ident = cmd.trigger_id or f"{cmd.user_id}:{hash(cmd.text)}"
        msg = Message(
            id=f"slack:{gw.name}:{team}:{cmd.channel_id}:cmd:{ident}",
            origin=Address(gw.name, cmd.channel_id),
            sender=gw.resolver.user(cmd.user_id) or cmd.user_name,
            sender_id=cmd.user_id,
            text=text,
            is_command=True,
        )
        return await gw.ctx.submit(msg)

    async def _submit_event(self, ev: MessageEvent, cb: EventCallback) -> Any:
        """The one inbound path, for live events and history catch-up alike."""
        # one channel at a time, in arrival order: a slow name lookup for one message must not
        # let the next message of the same channel overtake it (the core keeps submit order)
        lock = self._channel_locks.setdefault(ev.channel, asyncio.Lock())
        async with lock:
            msg = await self._to_message(ev, cb)
            result = await self.gw.ctx.submit(msg) if msg is not None else None
        if self.history is not None and ev.ts and self._binding_for(ev.channel) is not None:
            self.history.seen(ev.channel, ev.ts)  # submitted or filtered out: seen
        return result

    def _binding_for(self, channel: str) -> Any | None:
        for b in self.gw.ctx.bindings:
            if b.inbound and b.address.gateway == self.gw.name and b.address.chat == channel:
                return b
        return None

    def _is_foreign_bot_or_own(self, m: MessageEvent, app_id: str = "") -> bool:
        gw = self.gw
        if m.subtype == "bot_message":
            return True
        if m.user and gw.bot_user_id and m.user == gw.bot_user_id:
            return True
        if m.bot_id:
            if gw.config.ignore_bots:
                return True
            # our own posts always stop here, even if auth.test has not told us our bot_id yet
            return gw.bot_id is None or m.bot_id == gw.bot_id or (bool(app_id) and m.app_id == app_id)
        return False

    def _user_allowed(self, binding: Any, user: str | None) -> bool:
        opts = binding_options(binding.options)
        return not opts.allow_users or (user or "") in opts.allow_users

    async def _to_message(self, ev: MessageEvent, cb: EventCallback) -> Message | None:
        channel = ev.channel
        binding = self._binding_for(channel)
        if binding is None:
            return None
        team = cb.team_id or ev.team or self.gw.team_id or "-"
        base = f"slack:{self.gw.name}:{team}:{channel}"
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
        self.gw.threads.remember(channel, ev.ts, thread)
        return await self._build(f"{base}:{ev.ts}", channel, ev, thread, raw)

    async def _delete(
        self,
        base: str,
        channel: str,
        ts: str,
        thread_ts: str | None,
        prev: MessageEvent | None,
        raw: dict[str, Any],
    ) -> Message | None:
        resolver = self.gw.resolver
        if prev is not None and self._is_foreign_bot_or_own(prev):
            return None
        user = prev.user if prev is not None else None
        thread = (prev.thread_ts if prev is not None and prev.is_thread_reply else None) or (
            thread_ts if thread_ts and thread_ts != ts else None
        )
        if user:
            await resolver.resolve({user}, set(), self.gw.config.lookup_timeout)
        return Message(
            id=f"{base}:{ts}:delete",
            origin=Address(self.gw.name, channel, thread),
            sender=(resolver.user(user) if user else None) or user or "slack",
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
        resolver = self.gw.resolver
        user = ev.user or ""
        if ev.user_profile is not None and user:
            p = ev.user_profile
            resolver.prime_user(user, p.display_name or p.real_name or p.name)
        users, channels = mrkdwn.referenced_ids(ev.text)
        if user:
            users.add(user)
        await resolver.resolve(users, channels, self.gw.config.lookup_timeout)
        text = mrkdwn.to_readable(ev.text, resolver.user, resolver.channel)
        if ev.subtype == "me_message":
            text = f"_{text}_"
        attachments = tuple(
            Attachment(
                name=f.name or f.title or f.id or "file",
                content_type=f.mimetype or "application/octet-stream",
                size=f.size,
                url=file_ref(self.gw.name, f),
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
            origin=Address(self.gw.name, channel, thread),
            sender=resolver.user(user) or user or ev.username or "slack",
            sender_id=user,
            text=text,
            native_id=ev.ts,
            reply_to=thread,
            edit_of=edit_of,
            attachments=attachments,
            created=_ts_time(ev.ts),
            raw=MappingProxyType(raw),
        )


def _ts_time(ts: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)
