"""A gateway whose "platform" is two files of JSON lines.

- **Outbound**: every part the core delivers is appended to ``outbox`` as one line
  ``{"id", "message_id", "chat", "thread", "reply_to", "sender", "text", "part", "parts"}``
  (``id`` is the core's idempotency key: a retried part has the same one).
- **Inbound**: ``inbox`` is tailed. Each complete line ``{"id", "text", "sender"?, "chat"?}``
  becomes a :class:`Message` with the stable id ``jsonl:<instance>:<id>``; the byte offset
  after it is stored (``ctx.kv_set``) only once ``ctx.submit`` returned, so a restart resumes
  after the last message the core holds durably and never skips one. A line that is not such an
  object is logged (its byte offset and why, never its text) and skipped; nothing else is lost.
  A file that shrank (truncated or replaced) is read again from the start.

It uses only the public API: ``claudemesh_gateway``'s ``__all__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import ClassVar

from claudemesh_gateway import (
    Address,
    Capabilities,
    DeliveryError,
    Gateway,
    GatewayConfig,
    GatewayContext,
    GatewayState,
    Message,
    Outbound,
    SendResult,
)
from pydantic import Field

__all__ = ["JsonlConfig", "JsonlGateway"]

log = logging.getLogger(__name__)

OFFSET_KEY = "inbox_offset"
#: errors a retry will not fix (the path is a directory, not writable...): the core dead-letters the part
PERMANENT_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS})


class JsonlConfig(GatewayConfig):
    outbox: Path  # appended to, one JSON object per delivered part
    inbox: Path  # tailed; created empty if missing
    chat: str = Field("file", min_length=1)  # the chat of an inbound line without "chat"
    poll_interval: float = Field(0.5, gt=0, le=60)
    max_line_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)
    fsync: bool = True  # each outbound line is on disk before send() returns


class JsonlGateway(Gateway):
    kind: ClassVar[str] = "jsonl"
    Config: ClassVar[type[GatewayConfig]] = JsonlConfig
    capabilities: ClassVar[Capabilities] = Capabilities(max_text=100_000, max_parts=1, replies=True)

    def __init__(self, name: str, config: GatewayConfig, ctx: GatewayContext) -> None:
        super().__init__(name, config, ctx)
        self.config: JsonlConfig
        self._tail: asyncio.Task[None] | None = None
        self._skipping = False  # inside a line longer than max_line_bytes

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tail is not None:
            return
        self._tail = asyncio.create_task(self._follow(), name=f"jsonl:{self.name}:tail")
        self.set_state(GatewayState.CONNECTED)

    async def stop(self) -> None:
        task, self._tail = self._tail, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.set_state(GatewayState.STOPPED)

    async def check(self) -> list[str]:
        parent = self.config.outbox.parent
        return [] if parent.is_dir() else [f"outbox directory {parent} does not exist"]

    # -- outbound ---------------------------------------------------------------------------------------------
    async def send(self, out: Outbound) -> SendResult:
        key = out.idempotency_key or f"{out.message.id}|{out.to.key}|{out.part}"
        line = json.dumps({
            "id": key, "message_id": out.message.id, "chat": out.to.chat, "thread": out.to.thread,
            "reply_to": out.reply_to, "sender": out.message.sender, "text": out.text,
            "part": out.part, "parts": out.parts,
        }, ensure_ascii=False) + "\n"
        try:
            await asyncio.to_thread(self._append, line.encode())
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise DeliveryError(f"jsonl {self.name}: cannot append to the outbox: {reason}",
                                permanent=exc.errno in PERMANENT_ERRNOS) from None
        return SendResult(native_ids=(key,))

    def _append(self, data: bytes) -> None:
        fd = os.open(self.config.outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)  # one write of one line: readers never see half of it
            if self.config.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- inbound ----------------------------------------------------------------------------------------------
    async def _follow(self) -> None:
        saved = await self.ctx.kv_get(OFFSET_KEY)
        offset = int(saved) if isinstance(saved, int) else 0
        while True:
            try:
                offset = await self._read_from(offset)
            except OSError as exc:
                log.warning("jsonl %s: cannot read the inbox: %s", self.name, os.strerror(exc.errno or 0),
                            extra={"gateway": self.name})
            await asyncio.sleep(self.config.poll_interval)

    async def _read_from(self, offset: int) -> int:
        """Submit every complete line after ``offset``; the new offset (stored after each submit)."""
        size, chunk = await asyncio.to_thread(self._read, offset)
        if size < offset:
            log.info("jsonl %s: the inbox shrank; reading it from the start", self.name, extra={"gateway": self.name})
            self._skipping = False
            return 0
        limit = self.config.max_line_bytes
        while chunk:
            end = chunk.find(b"\n")
            if end < 0:
                if len(chunk) >= limit:  # no newline within the cap: skip to the end of this line
                    log.warning("jsonl %s: inbox line at byte %d is longer than %d bytes; skipped", self.name,
                                offset, limit, extra={"gateway": self.name})
                    self._skipping = True
                    offset += len(chunk)
                    await self.ctx.kv_set(OFFSET_KEY, offset)
                break  # a partial line: read again once it is complete
            line, chunk = chunk[:end], chunk[end + 1:]
            if self._skipping:
                self._skipping = False
            elif line.strip():
                message = self._message(line, offset)
                if message is not None:
                    await self.ctx.submit(message)  # durable when it returns: only then move past the line
            offset += end + 1
            await self.ctx.kv_set(OFFSET_KEY, offset)
        return offset

    def _read(self, offset: int) -> tuple[int, bytes]:
        path = self.config.inbox
        if not path.exists():
            path.touch(mode=0o600)
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                return size, b""
            f.seek(offset)
            return size, f.read(self.config.max_line_bytes * 4)

    def _message(self, line: bytes, offset: int) -> Message | None:
        try:
            obj = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            return self._bad(offset, "not JSON")
        if not isinstance(obj, dict):
            return self._bad(offset, "not a JSON object")
        line_id, text = obj.get("id"), obj.get("text")
        if isinstance(line_id, bool) or not isinstance(line_id, str | int) or not str(line_id):
            return self._bad(offset, '"id" must be a non-empty string or an integer')
        if not isinstance(text, str):
            return self._bad(offset, '"text" must be a string')
        chat = obj.get("chat", self.config.chat)
        sender = obj.get("sender", "someone")
        if not isinstance(chat, str) or not chat or not isinstance(sender, str):
            return self._bad(offset, '"chat" and "sender" must be strings')
        return Message(id=f"jsonl:{self.name}:{line_id}", origin=Address(self.name, chat), sender=sender,
                       sender_id=sender, text=text, native_id=str(line_id))

    def _bad(self, offset: int, why: str) -> None:
        log.warning("jsonl %s: inbox line at byte %d skipped: %s", self.name, offset, why,
                    extra={"gateway": self.name})
