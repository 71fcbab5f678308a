"""A fake Slack (Web API + Socket Mode endpoint) on 127.0.0.1, and gateway fixtures."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
from collections import defaultdict
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from claudemesh_gateway import Address, Binding
from claudemesh_gateway.plugins.slack.gateway import SlackBindingOptions, SlackGateway
from claudemesh_gateway.testing import RecordingContext

BOT_TOKEN = "xoxb-1111-2222-secretbot"
APP_TOKEN = "xapp-1-A111-secretapp"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM = "T0TEAM"
BOT_USER = "UBOT"
BOT_ID = "BBOT"
APP_ID = "A0APP"


class FakeSlack:
    """Enough of Slack for the gateway: records every call, enforces the bearer token,
    ~1 msg/s per channel (burst 3) for chat.postMessage (violations are recorded, not
    enforced), scripted 429s, a Socket Mode websocket that pushes envelopes and
    collects acks, and ``conversations.history`` over per-channel ``history`` lists."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.posts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.updates: list[dict[str, Any]] = []
        self.deletes: list[dict[str, Any]] = []
        self.users = {
            "U1": {
                "id": "U1",
                "name": "alice.l",
                "real_name": "Alice Liddell",
                "profile": {"display_name": "alice", "real_name": "Alice Liddell"},
            },
            "U2": {
                "id": "U2",
                "name": "bob",
                "real_name": "Bob",
                "profile": {"display_name": "", "real_name": "Bob B"},
            },
        }
        self.channels = {"C1": {"id": "C1", "name": "general"}, "C2": {"id": "C2", "name": "random"}}
        self.fail_429: dict[str, list[float]] = defaultdict(list)  # channel -> Retry-After per next call
        self.fail_error: dict[str, list[str]] = defaultdict(list)  # channel -> Slack error per next call
        self.lookup_429: list[float] = []
        self.lookup_delay: dict[str, float] = {}  # user id -> seconds users.info takes
        self.auth_error: str | None = None
        self.connections_error: str | None = None  # apps.connections.open fails with this
        self.rate_violations: list[tuple[str, float]] = []
        self._buckets: dict[str, tuple[float, float]] = {}
        self._ts = itertools.count(1)
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: list[str] = []
        self._ack_waiters: dict[str, asyncio.Future[None]] = {}
        self.connections_opened = 0
        self.socket_connected = asyncio.Event()
        self.url = ""
        self.echo = False  # like Slack: every post comes back as a message event over the socket
        self.echoed: list[str] = []
        self._bg: set[asyncio.Task[Any]] = set()
        # conversations.history: per channel, messages as Slack stores them (any order here)
        self.history: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.history_calls: list[tuple[float, dict[str, Any]]] = []  # (time.monotonic(), params)
        self.history_429: list[float] = []  # Retry-After of the next history calls
        self.history_error: dict[str, str] = {}  # channel -> error of every history call
        self.history_delay = 0.0  # seconds each history call takes
        self._history_last = 0.0

    # -- helpers ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        return app

    def next_ts(self) -> str:
        n = next(self._ts)
        return f"{1700000000 + n}.{n:06d}"

    def add_history(
        self, channel: str, text: str, *, user: str | None = "U1", ts: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A message posted to ``channel`` (what conversations.history will return). Without
        ``ts``, one just after the previous one and never before the wall clock."""
        if ts is None:
            now = max(time.time(), self._history_last + 0.001)
            self._history_last = now
            ts = f"{now:.6f}"
        msg: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts, "team": TEAM}
        msg.update(extra)
        msg = {k: v for k, v in msg.items() if v is not None}
        self.history[channel].append(msg)
        return msg

    def texts(self, channel: str) -> list[str]:
        return [p["text"] for p in self.posts[channel]]

    async def wait_posts(self, channel: str, n: int, within: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within):
            while len(self.posts[channel]) < n:  # noqa: ASYNC110 - state lives in the app's tasks
                await asyncio.sleep(0.02)
        return self.posts[channel]

    def methods(self, name: str) -> list[dict[str, Any]]:
        return [p for m, p in self.calls if m == name]

    def _rate_check(self, channel: str) -> None:
        # token bucket 1/s, burst 3, with a small tolerance for timer jitter
        now = time.monotonic()
        tokens, last = self._buckets.get(channel, (3.0, now))
        tokens = min(3.0, tokens + (now - last) * 1.0)
        if tokens < 0.9:
            self.rate_violations.append((channel, now))
        self._buckets[channel] = (max(tokens - 1.0, 0.0), now)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            raw = await request.read()
            ctype = request.content_type
            if ctype == "application/json":
                params.update(json.loads(raw or b"{}"))
            elif raw:
                params.update({k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()})
        return params

    # -- Web API ----------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        self.calls.append((method, params))
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if auth != f"Bearer {expected}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return await handler(request, params)

    async def _m_auth_test(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        if self.auth_error:
            return web.json_response({"ok": False, "error": self.auth_error})
        return web.json_response(
            {
                "ok": True,
                "user_id": BOT_USER,
                "bot_id": BOT_ID,
                "team_id": TEAM,
                "user": "meshbot",
                "team": "Test",
            }
        )

    async def _m_apps_connections_open(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        if self.connections_error:
            return web.json_response({"ok": False, "error": self.connections_error})
        self.connections_opened += 1
        return web.json_response(
            {"ok": True, "url": f"ws://{request.host}/socket?ticket=t{self.connections_opened}"}
        )

    def _scripted_failure(self, channel: str) -> web.Response | None:
        if self.fail_429[channel]:
            retry = self.fail_429[channel].pop(0)
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(int(retry))}
            )
        if self.fail_error[channel]:
            return web.json_response({"ok": False, "error": self.fail_error[channel].pop(0)})
        return None

    async def _m_chat_postMessage(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        channel = p.get("channel", "")
        failure = self._scripted_failure(channel)
        if failure is not None:
            return failure
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        self._rate_check(channel)
        ts = self.next_ts()
        self.posts[channel].append({**p, "ts": ts})
        if self.echo and self.sockets:
            ev = {
                "type": "message",
                "subtype": "bot_message" if p.get("username") else None,
                "channel": channel,
                "user": BOT_USER,
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "text": p.get("text", ""),
                "ts": ts,
                "team": TEAM,
            }
            if p.get("thread_ts"):
                ev["thread_ts"] = p["thread_ts"]
            self.echoed.append(ts)
            task = asyncio.get_running_loop().create_task(
                self.push(
                    event_callback({k: v for k, v in ev.items() if v is not None}, event_id=f"Echo{ts}"),
                    wait_ack=False,
                )
            )
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
        return web.json_response(
            {"ok": True, "channel": channel, "ts": ts, "message": {"text": p.get("text")}}
        )

    async def _m_chat_update(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        failure = self._scripted_failure(p.get("channel", ""))
        if failure is not None:
            return failure
        self.updates.append(p)
        return web.json_response({"ok": True, "channel": p.get("channel"), "ts": p.get("ts")})

    async def _m_chat_delete(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        failure = self._scripted_failure(p.get("channel", ""))
        if failure is not None:
            return failure
        self.deletes.append(p)
        return web.json_response({"ok": True, "channel": p.get("channel"), "ts": p.get("ts")})

    async def _m_users_info(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        if self.lookup_429:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(int(self.lookup_429.pop(0)))},
            )
        if p.get("user") in self.lookup_delay:
            await asyncio.sleep(self.lookup_delay[p["user"]])
        user = self.users.get(p.get("user", ""))
        if user is None:
            return web.json_response({"ok": False, "error": "user_not_found"})
        return web.json_response({"ok": True, "user": user})

    async def _m_conversations_history(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        """Newest first; ``oldest``/``latest`` exclusive unless ``inclusive``; ``limit`` per page;
        ``cursor`` is the ``next_cursor`` of the previous page (paging towards older messages)."""
        self.history_calls.append((time.monotonic(), p))
        if self.history_delay:
            await asyncio.sleep(self.history_delay)
        if self.history_429:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(int(self.history_429.pop(0)))},
            )
        channel = p.get("channel", "")
        if channel in self.history_error:
            return web.json_response({"ok": False, "error": self.history_error[channel]})
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        inclusive = str(p.get("inclusive", "0")).lower() in ("1", "true")
        oldest = Decimal(str(p["oldest"])) if p.get("oldest") else None
        latest = Decimal(str(p["latest"])) if p.get("latest") else None
        limit = int(p.get("limit") or 100)
        if not 1 <= limit <= 1000:
            return web.json_response({"ok": False, "error": "invalid_limit"})

        def inside(m: dict[str, Any]) -> bool:
            ts = Decimal(m["ts"])
            if oldest is not None and (ts < oldest or (ts == oldest and not inclusive)):
                return False
            return latest is None or ts < latest or (ts == latest and inclusive)

        msgs = sorted(
            (m for m in self.history[channel] if inside(m)), key=lambda m: Decimal(m["ts"]), reverse=True
        )
        start = 0
        if p.get("cursor"):
            cursor = str(p["cursor"])
            if not cursor.startswith("page:"):
                return web.json_response({"ok": False, "error": "invalid_cursor"})
            start = int(cursor[5:])
        page = msgs[start : start + limit]
        more = start + limit < len(msgs)
        return web.json_response(
            {
                "ok": True,
                "messages": page,
                "has_more": more,
                "pin_count": 0,
                "response_metadata": {"next_cursor": f"page:{start + limit}" if more else ""},
            }
        )

    async def _m_conversations_info(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        ch = self.channels.get(p.get("channel", ""))
        if ch is None:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        return web.json_response({"ok": True, "channel": ch})

    # -- Socket Mode ------------------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake"},
                "connection_info": {"app_id": APP_ID},
            }
        )
        self.socket_connected.set()
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                env = data.get("envelope_id")
                if env:
                    self.acks.append(env)
                    fut = self._ack_waiters.pop(env, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
        if ws in self.sockets:
            self.sockets.remove(ws)
        return ws

    async def wait_socket(self, within: float = 5.0) -> web.WebSocketResponse:
        async def _w() -> web.WebSocketResponse:
            while not self.sockets:
                self.socket_connected.clear()
                await self.socket_connected.wait()
            return self.sockets[-1]

        return await asyncio.wait_for(_w(), within)

    async def push(
        self, payload: dict[str, Any], *, kind: str = "events_api", wait_ack: bool = True, within: float = 5.0
    ) -> str:
        """Send one envelope over the newest socket; by default wait for its ack."""
        ws = await self.wait_socket(within)
        env = f"env-{next(self._ts)}"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack_waiters[env] = fut
        await ws.send_json(
            {
                "envelope_id": env,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": False,
                "retry_attempt": 0,
                "retry_reason": "",
            }
        )
        if wait_ack:
            await asyncio.wait_for(fut, within)
        return env


def event_callback(event: dict[str, Any], *, event_id: str = "Ev1") -> dict[str, Any]:
    return {
        "token": "legacy",
        "team_id": TEAM,
        "api_app_id": APP_ID,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1700000000,
        "event": event,
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
    }


def message_event(
    text: str = "hello", *, user: str = "U1", channel: str = "C1", ts: str = "1700000100.000100", **extra: Any
) -> dict[str, Any]:
    ev = {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "team": TEAM,
        "channel_type": "channel",
    }
    ev.update(extra)
    return ev


@pytest.fixture
async def fake_slack(aiohttp_server) -> FakeSlack:
    fake = FakeSlack()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    for ws in list(fake.sockets):
        await ws.close()


@pytest.fixture
async def http_session():
    async with aiohttp.ClientSession() as s:
        yield s


def binding(chat: str = "C1", direction: str = "both", **options: Any) -> Binding:
    return Binding(
        route="r1",
        address=Address("slack", chat),
        direction=direction,
        options=SlackBindingOptions(**options),
    )


@pytest.fixture
async def make_gateway(fake_slack, http_session):
    """make_gateway(mode="socket"|"events", bindings=[...], **config) -> started SlackGateway."""
    made: list[SlackGateway] = []

    async def make(
        mode: str = "socket",
        bindings: list[Binding] | None = None,
        start: bool = True,
        ctx: RecordingContext | None = None,
        **cfg: Any,
    ) -> SlackGateway:
        """``ctx``: reuse another gateway's context (its kv: a restart of the same instance)."""
        if ctx is None:
            ctx = RecordingContext(
                "slack", http_session, bindings if bindings is not None else [binding("C1")]
            )
        elif bindings is not None:
            ctx.set_bindings(bindings)
        conf: dict[str, Any] = {
            "bot_token": BOT_TOKEN,
            "api_base": f"{fake_slack.url}/api/",
            "mode": mode,
            "ping_interval": 1.0,
        }
        if mode == "socket":
            conf["app_token"] = APP_TOKEN
        else:
            conf["signing_secret"] = SIGNING_SECRET
        conf.update(cfg)
        gw = SlackGateway("slack", SlackGateway.Config.model_validate(conf), ctx)
        made.append(gw)
        if start:
            await gw.start()
        return gw

    yield make
    for gw in made:
        await gw.stop()


@pytest.fixture
def sk():
    """Helpers for the test modules (importlib mode: test files cannot import conftest)."""
    import types

    return types.SimpleNamespace(
        BOT_TOKEN=BOT_TOKEN,
        APP_TOKEN=APP_TOKEN,
        SIGNING_SECRET=SIGNING_SECRET,
        TEAM=TEAM,
        BOT_USER=BOT_USER,
        BOT_ID=BOT_ID,
        APP_ID=APP_ID,
        event_callback=event_callback,
        message_event=message_event,
        binding=binding,
    )
