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
from claudemesh_gateway.plugins.slack.config import SlackBindingOptions
from claudemesh_gateway.plugins.slack.gateway import SlackGateway
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
    collects acks, ``conversations.history`` over per-channel ``history`` lists, and files:
    ``files.info`` + a download path that wants the bot token (``add_file``), and the upload
    flow of ``files_upload_v2`` (``files.getUploadURLExternal`` -> POST of the bytes to the
    loopback ``upload_url`` -> ``files.completeUploadExternal``, recorded in ``uploads``)."""

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
        # what Slack reports in x-oauth-scopes on every Web API answer (None: no header)
        self.scopes: set[str] | None = {
            "chat:write", "channels:history", "groups:history", "users:read", "channels:read",
            "files:read", "files:write",
        }
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
        # files: id -> {"info": the file object files.info returns, "data": bytes}
        self.files: dict[str, dict[str, Any]] = {}
        self._file_ids = itertools.count(1)
        self.files_deleted: set[str] = set()  # files.info answers file_deleted for these
        self.files_info_error: str | None = None  # every files.info fails with this (e.g. missing_scope)
        self.files_info_429: list[float] = []  # Retry-After of the next files.info calls
        self.download_status: list[tuple[int, dict[str, str]]] = []  # (status, headers) of the next downloads
        self.downloads: list[dict[str, Any]] = []  # every download request: path, host, authorization
        self.download_chunked = False  # stream downloads without a Content-Length
        self.upload_url_error: str | None = None  # files.getUploadURLExternal fails with this
        self.upload_status: list[int] = []  # HTTP status of the next POSTs to an upload_url
        self.upload_posts: list[dict[str, Any]] = []  # every POST to an upload_url: file id, content type
        self._pending: dict[str, dict[str, Any]] = {}  # file id -> filename, length, data (not completed)
        self.uploads: list[dict[str, Any]] = []  # completed: channel, thread_ts, initial_comment, files, ts
        self.complete_shares = True  # completeUploadExternal's files carry shares (Slack: not always)
        self.info_shares = True  # files.info of an uploaded file carries its shares

    # -- helpers ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files-pri/{ident}/download/{name}", self._download)
        app.router.add_post("/upload/v1/{file_id}", self._upload_post)
        return app

    def add_file(
        self, data: bytes, name: str = "plot.png", mimetype: str = "image/png", **info: Any
    ) -> dict[str, Any]:
        """A file stored on the fake; returns its file object as a message event carries it."""
        fid = f"F{next(self._file_ids):04d}"
        url = f"{self.url}/files-pri/{TEAM}-{fid}/download/{name}"
        obj = {
            "id": fid,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "size": len(data),
            "mode": "hosted",
            "url_private": url,
            "url_private_download": url,
            "permalink": f"https://test.slack.com/files/{BOT_USER}/{fid}/{name}",
            **info,
        }
        self.files[fid] = {"info": obj, "data": data}
        return dict(obj)

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
        resp = await handler(request, params)
        if self.scopes is not None and method != "apps.connections.open":
            resp.headers["x-oauth-scopes"] = ",".join(sorted(self.scopes))
        return resp

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

    def _refusal(self, channel: str) -> web.Response | None:
        """A scripted failure for ``channel``, else channel_not_found for an unknown one, else None."""
        failure = self._scripted_failure(channel)
        if failure is None and channel not in self.channels:
            failure = web.json_response({"ok": False, "error": "channel_not_found"})
        return failure

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
        failure = self._refusal(channel)
        if failure is not None:
            return failure
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

    # -- files ---------------------------------------------------------------------------------------
    async def _m_files_info(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        if self.files_info_429:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(int(self.files_info_429.pop(0)))},
            )
        if self.files_info_error:
            return web.json_response({"ok": False, "error": self.files_info_error, "needed": "files:read"})
        fid = p.get("file", "")
        if fid in self.files_deleted:
            return web.json_response({"ok": False, "error": "file_deleted"})
        f = self.files.get(fid)
        if f is None:
            return web.json_response({"ok": False, "error": "file_not_found"})
        info = dict(f["info"])
        if not self.info_shares:
            info.pop("shares", None)
        return web.json_response({"ok": True, "file": info, "comments": []})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self.downloads.append(
            {"path": request.path, "host": request.host, "authorization": request.headers.get("Authorization")}
        )
        if self.download_status:
            status, headers = self.download_status.pop(0)
            return web.Response(status=status, headers=headers, text="scripted")
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            # what Slack serves without a token that may read the file: its login page, with 200
            return web.Response(text="<html><body>Sign in to Slack</body></html>", content_type="text/html")
        fid = request.match_info["ident"].rpartition("-")[2]
        f = self.files.get(fid)
        if f is None:
            return web.Response(status=404, text="not found")
        ctype = f["info"].get("mimetype") or "application/octet-stream"
        if not self.download_chunked:
            return web.Response(body=f["data"], content_type=ctype)
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(f["data"]), 1024):
            await resp.write(f["data"][i : i + 1024])
        await resp.write_eof()
        return resp

    async def _m_files_getUploadURLExternal(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        if self.upload_url_error:
            return web.json_response({"ok": False, "error": self.upload_url_error})
        if not p.get("filename") or not int(p.get("length") or 0):
            return web.json_response({"ok": False, "error": "missing_argument"})
        fid = f"F{next(self._file_ids):04d}"
        self._pending[fid] = {"filename": p["filename"], "length": int(p["length"]), "data": None}
        return web.json_response({"ok": True, "upload_url": f"{self.url}/upload/v1/{fid}", "file_id": fid})

    async def _upload_post(self, request: web.Request) -> web.Response:
        """Slack's upload URL takes the raw bytes or a multipart form; answers 200 ``OK - <length>``."""
        fid = request.match_info["file_id"]
        self.upload_posts.append(
            {"file_id": fid, "content_type": request.content_type, "authorization": request.headers.get("Authorization")}
        )
        if self.upload_status:
            return web.Response(status=self.upload_status.pop(0), text="scripted failure")
        pending = self._pending.get(fid)
        if pending is None:
            return web.Response(status=404, text="unknown upload")
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            part = await reader.next()
            data = await part.read() if part is not None else b""
        else:
            data = await request.read()
        pending["data"] = bytes(data)
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")

    async def _m_files_completeUploadExternal(self, request: web.Request, p: dict[str, Any]) -> web.Response:
        channel = p.get("channel_id", "")
        failure = self._refusal(channel)
        if failure is not None:
            return failure
        wanted = json.loads(p.get("files") or "[]")
        for f in wanted:
            pending = self._pending.get(f.get("id", ""))
            if pending is None or pending["data"] is None:
                return web.json_response({"ok": False, "error": "file_not_found"})
        self._rate_check(channel)  # a file message counts against the channel's posting pace
        ts = self.next_ts()
        share: dict[str, Any] = {"ts": ts, "channel_name": self.channels[channel].get("name"), "team_id": TEAM}
        if p.get("thread_ts"):
            share["thread_ts"] = p["thread_ts"]
        kind = "private" if channel.startswith("G") else "public"
        done = []
        for f in wanted:
            pending = self._pending.pop(f["id"])
            obj = {
                "id": f["id"],
                "name": pending["filename"],
                "title": f.get("title") or pending["filename"],
                "mimetype": "application/octet-stream",
                "size": len(pending["data"]),
                "mode": "hosted",
                "user": BOT_USER,
                "shares": {kind: {channel: [share]}},
            }
            self.files[f["id"]] = {"info": obj, "data": pending["data"], "declared_length": pending["length"]}
            done.append(obj)
        self.uploads.append(
            {
                "channel": channel,
                "thread_ts": p.get("thread_ts"),
                "initial_comment": p.get("initial_comment"),
                "files": [{**o, "data": self.files[o["id"]]["data"]} for o in done],
                "ts": ts,
            }
        )
        if self.echo and self.sockets:
            ev = {
                "type": "message",
                "subtype": "file_share",
                "channel": channel,
                "user": BOT_USER,
                "upload": True,
                "display_as_bot": False,
                "text": p.get("initial_comment") or "",
                "files": [{k: v for k, v in o.items() if k != "shares"} for o in done],
                "ts": ts,
                "team": TEAM,
            }
            if p.get("thread_ts"):
                ev["thread_ts"] = p["thread_ts"]
            self.echoed.append(ts)
            task = asyncio.get_running_loop().create_task(
                self.push(event_callback(ev, event_id=f"Echo{ts}"), wait_ack=False)
            )
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
        files = [o if self.complete_shares else {"id": o["id"], "title": o["title"]} for o in done]
        return web.json_response({"ok": True, "files": files})

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
