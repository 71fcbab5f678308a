"""``GET /-/api/live``: the message trace as server-sent events, for the dashboard's live view.

Each event is one ``data:`` line of JSON ``{"message_id", "step", "ts", "outbox_id", "lane",
"route", "reason"}`` (no text: the trace has none). The token goes in the ``Authorization`` header
like every other admin call (the dashboard reads the stream with ``fetch``, not ``EventSource``,
which cannot send headers). A slow client loses events (bounded queue, a ``dropped`` count is sent
when it catches up) and never slows the gateway. Needs ``[trace] enabled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import appkeys
from .admin import require_admin

if TYPE_CHECKING:
    from ..store.base import TraceEvent

__all__ = ["LiveHub", "live_handler"]

QUEUE_MAX = 1000
MAX_CLIENTS = 20
HEARTBEAT_S = 15.0


def _view(ev: TraceEvent) -> dict[str, Any]:
    d = ev.detail
    out: dict[str, Any] = {"message_id": ev.message_id, "step": ev.step, "ts": ev.ts, "outbox_id": ev.outbox_id}
    for k in ("lane", "route", "source", "reason", "error", "attempt"):
        if k in d:
            out[k] = d[k] if k != "error" else str(d[k])[:200]
    if ev.step == "queued":
        out["lanes"] = [i.get("lane") for i in d.get("items", [])][:20]
        out["routes"] = d.get("routes", [])[:20]
    return out


class _Client:
    __slots__ = ("dropped", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_MAX)
        self.dropped = 0


class LiveHub:
    """Fans trace events out to the connected live-view clients."""

    def __init__(self) -> None:
        self.clients: set[_Client] = set()
        self._unsubscribe: Any = None

    def attach(self, recorder: Any) -> None:
        if self._unsubscribe is None and recorder is not None and getattr(recorder, "enabled", False):
            self._unsubscribe = recorder.subscribe(self.publish)

    def publish(self, ev: TraceEvent) -> None:
        if not self.clients:
            return
        view = _view(ev)
        for c in self.clients:
            try:
                c.queue.put_nowait(view)
            except asyncio.QueueFull:
                c.dropped += 1

    async def close(self, _app: web.Application | None = None) -> None:
        """End every stream (app shutdown: the handlers return instead of holding the shutdown)."""
        for c in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):
                c.queue.put_nowait(None)
            if c.queue.full():  # make room for the end marker
                with contextlib.suppress(asyncio.QueueEmpty):
                    c.queue.get_nowait()
                c.queue.put_nowait(None)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


async def live_handler(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    hub: LiveHub = request.config_dict[appkeys.LIVE]
    runtime = request.config_dict[appkeys.RUNTIME]
    hub.attach(getattr(runtime, "trace", None))
    if len(hub.clients) >= MAX_CLIENTS:
        raise web.HTTPServiceUnavailable(text='{"error":"too many live viewers"}', content_type="application/json",
                                         headers={"Retry-After": "10"})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    client = _Client()
    hub.clients.add(client)
    enabled = bool(getattr(getattr(runtime, "trace", None), "enabled", False))
    try:
        await resp.write(f"event: hello\ndata: {json.dumps({'trace': enabled})}\n\n".encode())
        while True:
            try:
                item = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            if client.dropped:
                await resp.write(f"event: dropped\ndata: {client.dropped}\n\n".encode())
                client.dropped = 0
            await resp.write(f"data: {json.dumps(item, separators=(',', ':'))}\n\n".encode())
    except ConnectionResetError:  # the viewer went away
        return resp
    finally:
        hub.clients.discard(client)
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp
