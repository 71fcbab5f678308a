"""A fake Telegram Bot API server for tests (aiohttp, 127.0.0.1, port 0).

Speaks the real methods at ``/bot<token>/<method>`` (JSON, form or multipart
bodies, as the real API accepts) and file downloads at
``/file/bot<token>/<path>``. Records every call, enforces its own per-chat /
per-group / global send rate (a violation is answered with a real-shaped 429
and recorded in ``violations``), validates HTML like Telegram (``can't parse
entities``), and implements getUpdates offset/timeout semantics, including the
409 conflicts (webhook set, or a second concurrent poller).
"""

from __future__ import annotations

import asyncio
import collections
import html
import itertools
import json
import math
import re
import time
from typing import Any

from aiohttp import web

ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
                "tg-emoji", "code", "pre", "blockquote"}
_HTML_TOKEN = re.compile(
    r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);|[<>&]"
)
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


class ParseError(Exception):
    pass


def parse_html(text: str) -> str:
    """Telegram's HTML rules, strictly: returns the visible text or raises ParseError."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in _HTML_TOKEN.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        offset = len(text[:m.start()].encode())
        if m.group(2):
            closing, tag = m.group(1) == "/", m.group(2).lower()
            if tag not in ALLOWED_TAGS:
                raise ParseError(f'Unsupported start tag "{tag}" at byte offset {offset}')
            if closing:
                if not stack or stack[-1] != tag:
                    raise ParseError(f'Unmatched end tag at byte offset {offset}, expected "</{stack[-1] if stack else ""}>"')
                stack.pop()
            else:
                stack.append(tag)
        elif m.group(4):
            ent = m.group(4)
            if ent.startswith("#x"):
                out.append(chr(int("0" + ent[1:], 0)))
            elif ent.startswith("#"):
                out.append(chr(int(ent[1:])))
            elif ent in _NAMED:
                out.append(_NAMED[ent])
            else:
                raise ParseError(f'Unsupported HTML entity "&{ent};" at byte offset {offset}')
        else:
            raise ParseError(f"Can't find end of the entity starting at byte offset {offset}"
                             if m.group(0) == "&" else f"Unexpected character at byte offset {offset}")
    out.append(text[pos:])
    if stack:
        raise ParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeBotAPI:
    def __init__(self, token: str = "123456:TEST-token_abcdefghijklmnopqrstuvwxyz0123", *,
                 enforce_limits: bool = True) -> None:
        self.token = token
        self.bot_user = {"id": int(token.split(":")[0]), "is_bot": True, "first_name": "Mesh Gateway",
                         "username": "mesh_test_bot", "can_join_groups": True,
                         "can_read_all_group_messages": True, "supports_inline_queries": False}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self.confirmed_offset = 0
        self.webhook: dict[str, Any] = {"url": ""}
        self.messages: dict[tuple[str, int], dict[str, Any]] = {}
        self.sent: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.edits: list[dict[str, Any]] = []
        self._message_ids: dict[str, itertools.count] = collections.defaultdict(lambda: itertools.count(500))
        self._user_message_ids = itertools.count(10)
        self._send_seq = itertools.count(1)  # global order of successful sends, across chats
        self.files: dict[str, tuple[str, bytes]] = {}
        self._file_ids = itertools.count(1)
        self.failures: list[dict[str, Any]] = []
        self.unknown_chats: set[str] = set()
        self.blocked_chats: set[str] = set()
        self.forum_chats: set[str] = set()
        self.violations: list[dict[str, Any]] = []
        self.enforce_limits = enforce_limits
        # (window seconds, max sends in any window): a bit more lenient than the gateway's
        # declared buckets (1/s burst 3; 20/min burst 20; 30/s burst 30), so only a real
        # violation of those trips it
        self.chat_window = (2.0, 6)
        self.group_window = (60.0, 41)
        self.global_window = (1.0, 61)
        self._chat_sends: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._group_sends: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._global_sends: collections.deque[float] = collections.deque()
        self.max_poll_wait = 2.0
        self._poll_generation = 0
        self._changed: asyncio.Event | None = None
        self._sent_changed: asyncio.Event | None = None
        self.app = web.Application()
        self.app.router.add_route("*", "/bot{token}/{method}", self._api)
        self.app.router.add_get("/file/bot{token}/{path:.*}", self._file)
        self.url = ""  # set by the fixture once the server listens
        self.commands: Any = None

    # ------------------------------------------------------------------ test helpers
    @property
    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    @property
    def _sent_event(self) -> asyncio.Event:
        if self._sent_changed is None:
            self._sent_changed = asyncio.Event()
        return self._sent_changed

    def chat_obj(self, chat_id: int | str) -> dict[str, Any]:
        cid = int(chat_id)
        if cid < 0:
            c: dict[str, Any] = {"id": cid, "type": "supergroup", "title": f"Group {cid}"}
            if str(cid) in self.forum_chats:
                c["is_forum"] = True
            return c
        return {"id": cid, "type": "private", "first_name": "Ada", "username": "ada"}

    def make_message(self, chat_id: int, text: str | None = "hello", *, from_id: int = 111,
                     first_name: str = "Ada", last_name: str | None = "Lovelace", username: str | None = "ada",
                     is_bot: bool = False, thread: int | None = None, reply_to: int | None = None,
                     message_id: int | None = None, entities: list[dict[str, Any]] | None = None,
                     caption: str | None = None, date: int | None = None, **extra: Any) -> dict[str, Any]:
        user: dict[str, Any] = {"id": from_id, "is_bot": is_bot, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
        m: dict[str, Any] = {
            "message_id": message_id if message_id is not None else next(self._user_message_ids),
            "from": user, "chat": self.chat_obj(chat_id), "date": date or int(time.time()),
        }
        if text is not None:
            m["text"] = text
        if caption is not None:
            m["caption"] = caption
        if entities:
            m["entities"] = entities
        if thread is not None:
            m["message_thread_id"] = thread
            m["is_topic_message"] = True
            # a message in a forum topic "replies" to the topic creation message unless it replies
            m["reply_to_message"] = {"message_id": thread, "chat": m["chat"], "date": m["date"],
                                     "forum_topic_created": {"name": "t", "icon_color": 1}}
        if reply_to is not None:
            m["reply_to_message"] = {"message_id": reply_to, "chat": m["chat"], "date": m["date"], "text": "earlier"}
            if thread is not None:
                m["reply_to_message"]["message_thread_id"] = thread
        m.update(extra)
        return m

    def make_update(self, message: dict[str, Any] | None = None, *, kind: str = "message",
                    **kwargs: Any) -> dict[str, Any]:
        if message is None:
            message = self.make_message(**kwargs)
        return {"update_id": next(self._update_ids), kind: message}

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        for kind in ("message", "channel_post"):
            m = update.get(kind)
            if isinstance(m, dict) and "chat" in m:  # users' messages can be replied to, like the bot's
                self.messages.setdefault((str(m["chat"]["id"]), m["message_id"]), m)
        self.updates.append(update)
        self._event.set()
        return update

    def add_message(self, chat_id: int, text: str | None = "hello", **kwargs: Any) -> dict[str, Any]:
        return self.push(self.make_update(self.make_message(chat_id, text, **kwargs)))

    def add_edit(self, original: dict[str, Any], new_text: str, edit_date: int | None = None) -> dict[str, Any]:
        m = dict(original)
        m["text"] = new_text
        m["edit_date"] = edit_date or int(time.time())
        return self.push(self.make_update(m, kind="edited_message"))

    def add_file(self, content: bytes, path: str = "documents/file_1.bin") -> str:
        file_id = f"FILE{next(self._file_ids)}"
        self.files[file_id] = (path, content)
        return file_id

    def fail_next(self, method: str, status: int, description: str, *, chat: str | int | None = None,
                  retry_after: int | None = None, times: int = 1) -> None:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        self.failures.append({"method": method, "chat": None if chat is None else str(chat),
                              "status": status, "body": body, "times": times})

    def texts(self, chat: int | str) -> list[str]:
        return [m["text"] for m in self.sent[str(chat)] if "text" in m]

    def method_calls(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p in self.calls if m == method]

    async def wait_sent(self, chat: int | str, count: int, limit_s: float = 10.0) -> list[dict[str, Any]]:
        async def _wait() -> None:
            while len(self.sent[str(chat)]) < count:
                self._sent_event.clear()
                await self._sent_event.wait()
        await asyncio.wait_for(_wait(), limit_s)
        return self.sent[str(chat)]

    async def wait_confirmed(self, offset: int, limit_s: float = 10.0) -> None:
        async def _wait() -> None:
            while self.confirmed_offset < offset:
                self._event.clear()
                await self._event.wait()
        await asyncio.wait_for(_wait(), limit_s)

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _err(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=status)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        ctype = request.content_type
        if ctype == "application/json":
            body = await request.read()
            if body:
                params.update(json.loads(body))
        elif ctype == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if part.filename:
                    params[part.name] = {"upload": True, "filename": part.filename,
                                         "content": await part.read(), "content_type": part.headers.get("Content-Type")}
                else:
                    params[part.name] = _maybe_json(await part.text())
        elif ctype == "application/x-www-form-urlencoded":
            form = await request.post()
            params.update({k: _maybe_json(str(v)) for k, v in form.items()})
        return params

    def _take_failure(self, method: str, params: dict[str, Any]) -> web.Response | None:
        for f in self.failures:
            if f["method"] == method and (f["chat"] is None or f["chat"] == str(params.get("chat_id"))):
                f["times"] -= 1
                if f["times"] <= 0:
                    self.failures.remove(f)
                return web.json_response(f["body"], status=f["status"])
        return None

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await self._params(request)
        self.calls.append((method, params))
        if request.match_info["token"] != self.token:
            return self._err(401, "Unauthorized")
        failure = self._take_failure(method, params)
        if failure is not None:
            return failure
        handler = getattr(self, "m_" + method, None)
        if handler is None:
            return self._err(404, "Not Found")
        return await handler(params)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for p, content in self.files.values():
            if p == path:
                return web.Response(body=content)
        return web.Response(status=404)

    def _rate_check(self, chat: str) -> web.Response | None:
        if not self.enforce_limits:
            return None
        now = time.monotonic()
        checks = [(self._chat_sends[chat], self.chat_window, "chat")]
        if chat.startswith("-"):
            checks.append((self._group_sends[chat], self.group_window, "group"))
        checks.append((self._global_sends, self.global_window, "global"))
        for dq, (window, limit), scope in checks:
            while dq and now - dq[0] > window:
                dq.popleft()
            if len(dq) >= limit:
                retry = max(1, math.ceil(window - (now - dq[0])))
                self.violations.append({"chat": chat, "scope": scope, "at": now})
                return self._err(429, f"Too Many Requests: retry after {retry}", {"retry_after": retry})
        for dq, _, _ in checks:
            dq.append(now)
        return None

    def _chat_errors(self, chat: str) -> web.Response | None:
        if chat in self.unknown_chats:
            return self._err(400, "Bad Request: chat not found")
        if chat in self.blocked_chats:
            return self._err(403, "Forbidden: bot was blocked by the user")
        return None

    def _visible(self, text: str, parse_mode: str | None) -> str:
        if parse_mode and str(parse_mode).upper() == "HTML":
            return parse_html(text)
        return text

    def _new_message(self, chat: str, params: dict[str, Any]) -> dict[str, Any]:
        mid = next(self._message_ids[chat])
        bot = {k: v for k, v in self.bot_user.items() if k in ("id", "is_bot", "first_name", "username")}
        m: dict[str, Any] = {"message_id": mid, "from": bot, "chat": self.chat_obj(chat), "date": int(time.time())}
        if params.get("message_thread_id") is not None:
            m["message_thread_id"] = int(params["message_thread_id"])
            m["is_topic_message"] = True
        rp = params.get("reply_parameters")
        reply_id = (rp or {}).get("message_id") if isinstance(rp, dict) else params.get("reply_to_message_id")
        if reply_id is not None:
            replied = self.messages.get((chat, int(reply_id)))
            if replied is not None:
                m["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
            elif not (isinstance(rp, dict) and rp.get("allow_sending_without_reply")):
                raise _Reject(self._err(400, "Bad Request: message to be replied not found"))
        return m

    def _record(self, chat: str, m: dict[str, Any], params: dict[str, Any]) -> None:
        rec = dict(m)
        rec["_seq"] = next(self._send_seq)
        rec["_params"] = {k: v for k, v in params.items() if not isinstance(v, dict) or not v.get("upload")}
        self.messages[(chat, m["message_id"])] = m
        self.sent[chat].append(rec)
        self._sent_event.set()

    # ------------------------------------------------------------------ methods
    async def m_getMe(self, params: dict[str, Any]) -> web.Response:
        return self._ok(self.bot_user)

    async def m_setMyCommands(self, params: dict[str, Any]) -> web.Response:
        self.commands = params.get("commands")
        return self._ok(True)

    async def m_getUpdates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook.get("url"):
            return self._err(409, "Conflict: can't use getUpdates method while webhook is active; "
                                  "use deleteWebhook to delete the webhook first")
        self._poll_generation += 1
        generation = self._poll_generation
        offset = int(params.get("offset") or 0)
        if offset:
            self.confirmed_offset = max(self.confirmed_offset, offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            self._event.set()
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), self.max_poll_wait)
        while True:
            if generation != self._poll_generation:
                return self._err(409, "Conflict: terminated by other getUpdates request; "
                                      "make sure that only one bot instance is running")
            ready = [u for u in self.updates if u["update_id"] >= offset][:limit]
            if ready or time.monotonic() >= deadline:
                return self._ok(ready)
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                pass

    async def m_setWebhook(self, params: dict[str, Any]) -> web.Response:
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            return self._err(400, "Bad Request: secret token contains unallowed characters")
        self.webhook = {"url": params.get("url", ""), "secret_token": secret,
                        "allowed_updates": params.get("allowed_updates"),
                        "max_connections": params.get("max_connections")}
        if params.get("drop_pending_updates") in (True, "true", "True"):
            self.updates.clear()
        return self._ok(True)

    async def m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = {"url": ""}
        if params.get("drop_pending_updates") in (True, "true", "True"):
            self.updates.clear()
        return self._ok(True)

    async def m_getWebhookInfo(self, params: dict[str, Any]) -> web.Response:
        info = {"url": self.webhook.get("url", ""), "has_custom_certificate": False,
                "pending_update_count": len(self.updates)}
        if self.webhook.get("allowed_updates"):
            info["allowed_updates"] = self.webhook["allowed_updates"]
        return self._ok(info)

    async def m_getChat(self, params: dict[str, Any]) -> web.Response:
        chat = str(params.get("chat_id"))
        if chat in self.unknown_chats:
            return self._err(400, "Bad Request: chat not found")
        c = self.chat_obj(chat)
        c.update({"accent_color_id": 0, "max_reaction_count": 11,
                  "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False,
                                          "unique_gifts": False, "premium_subscription": False,
                                          "gifts_from_channels": False}})
        return self._ok(c)

    async def m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat = str(params.get("chat_id"))
        if (e := self._chat_errors(chat)) is not None:
            return e
        raw = str(params.get("text") or "")
        try:
            text = self._visible(raw, params.get("parse_mode"))
        except ParseError as exc:
            return self._err(400, f"Bad Request: can't parse entities: {exc}")
        if not text.strip():
            return self._err(400, "Bad Request: message text is empty")
        if _utf16(text) > 4096:
            return self._err(400, "Bad Request: message is too long")
        if (e := self._rate_check(chat)) is not None:
            return e
        try:
            m = self._new_message(chat, params)
        except _Reject as r:
            return r.response
        m["text"] = text
        self._record(chat, m, params)
        return self._ok(m)

    async def m_editMessageText(self, params: dict[str, Any]) -> web.Response:
        chat = str(params.get("chat_id"))
        key = (chat, int(params.get("message_id") or 0))
        if key not in self.messages:
            return self._err(400, "Bad Request: message to edit not found")
        try:
            text = self._visible(str(params.get("text") or ""), params.get("parse_mode"))
        except ParseError as exc:
            return self._err(400, f"Bad Request: can't parse entities: {exc}")
        m = self.messages[key]
        if "text" not in m:
            return self._err(400, "Bad Request: there is no text in the message to edit")
        if m.get("text") == text:
            return self._err(400, "Bad Request: message is not modified: specified new message content and "
                                  "reply markup are exactly the same as a current content and reply markup")
        m["text"] = text
        m["edit_date"] = int(time.time())
        self.edits.append({"chat": chat, "message_id": key[1], "text": text, "_params": params})
        return self._ok(m)

    async def m_editMessageCaption(self, params: dict[str, Any]) -> web.Response:
        chat = str(params.get("chat_id"))
        key = (chat, int(params.get("message_id") or 0))
        if key not in self.messages:
            return self._err(400, "Bad Request: message to edit not found")
        try:
            caption = self._visible(str(params.get("caption") or ""), params.get("parse_mode"))
        except ParseError as exc:
            return self._err(400, f"Bad Request: can't parse entities: {exc}")
        if _utf16(caption) > 1024:
            return self._err(400, "Bad Request: message caption is too long")
        m = self.messages[key]
        if m.get("caption") == caption:
            return self._err(400, "Bad Request: message is not modified")
        m["caption"] = caption
        self.edits.append({"chat": chat, "message_id": key[1], "caption": caption, "_params": params})
        return self._ok(m)

    async def _send_file(self, params: dict[str, Any], field: str) -> web.Response:
        chat = str(params.get("chat_id"))
        if (e := self._chat_errors(chat)) is not None:
            return e
        value = params.get(field)
        if isinstance(value, dict) and value.get("upload"):
            file_id = self.add_file(value["content"], f"{field}s/{value['filename']}")
            size, name = len(value["content"]), value["filename"]
        elif isinstance(value, str) and value.startswith("attach://"):
            up = params.get(value[len("attach://"):])
            if not isinstance(up, dict):
                return self._err(400, "Bad Request: wrong file identifier/HTTP URL specified")
            file_id = self.add_file(up["content"], f"{field}s/{up['filename']}")
            size, name = len(up["content"]), up["filename"]
        elif isinstance(value, str) and (value in self.files or value.startswith(("http://", "https://"))):
            file_id, size = value, len(self.files[value][1]) if value in self.files else 0
            name = value.rsplit("/", 1)[-1]
        else:
            return self._err(400, "Bad Request: wrong file identifier/HTTP URL specified")
        caption = params.get("caption")
        if caption:
            try:
                caption = self._visible(str(caption), params.get("parse_mode"))
            except ParseError as exc:
                return self._err(400, f"Bad Request: can't parse entities: {exc}")
            if _utf16(caption) > 1024:
                return self._err(400, "Bad Request: message caption is too long")
        if (e := self._rate_check(chat)) is not None:
            return e
        try:
            m = self._new_message(chat, params)
        except _Reject as r:
            return r.response
        if field == "photo":
            m["photo"] = [{"file_id": file_id, "file_unique_id": file_id, "width": 10, "height": 10,
                           "file_size": size}]
        else:
            m["document"] = {"file_id": file_id, "file_unique_id": file_id, "file_name": name, "file_size": size}
        if caption:
            m["caption"] = caption
        self._record(chat, m, params)
        return self._ok(m)

    async def m_sendDocument(self, params: dict[str, Any]) -> web.Response:
        return await self._send_file(params, "document")

    async def m_sendPhoto(self, params: dict[str, Any]) -> web.Response:
        return await self._send_file(params, "photo")

    async def m_getFile(self, params: dict[str, Any]) -> web.Response:
        file_id = str(params.get("file_id"))
        if file_id not in self.files:
            return self._err(400, "Bad Request: invalid file_id")
        path, content = self.files[file_id]
        return self._ok({"file_id": file_id, "file_unique_id": file_id, "file_size": len(content),
                         "file_path": path})


class _Reject(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _maybe_json(value: str) -> Any:
    if value[:1] in ("{", "[") or value in ("true", "false"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


__all__ = ["FakeBotAPI", "ParseError", "html", "parse_html"]
