"""One logical connection to the broker: connect, hello, read, keepalive, reconnect (A.2–A.6).

The :class:`Connection` owns the WebSocket and the reconnect loop. Above it, the peer
sends requests (correlated by ``_reqId`` or ``id``), sends (correlated by the ``send.id``
echoed in ``ack``, a separate namespace) and fire-and-forget frames, and receives pushes
through a callback. A frame the broker sends that we do not understand is logged at DEBUG
and otherwise ignored: nothing the broker says can break the read loop.

Frames that are bad rather than merely unknown (not JSON, nested too deeply, too many values,
not an object, a handler failure, or an error frame for nothing we wait for) are counted in :attr:`Connection.bad_frames` by reason and
logged on one line, at WARNING for the first of each reason per minute and at DEBUG after that,
so a flood cannot flood the log. The connection survives them. A frame over
:data:`MAX_INBOUND_FRAME_BYTES` cannot be skipped (aiohttp refuses it from its header, before
buffering the payload, and closes with 1009; a WebSocket stream cannot be resynchronised past a
frame it has not read), so it is counted as ``oversized`` and the connection reconnects with
backoff, with one line that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ..errors import DeliveryError, MeshError, MeshTerminalError, MeshTimeout
from .aio import wait_event, with_timeout
from .handshake import Refusal, build_hello, build_session_hello, classify_refusal
from .state import SessionIdentity

__all__ = ["MAX_FRAME_BYTES", "MAX_INBOUND_FRAME_BYTES", "MAX_INBOUND_VALUES", "Connection", "ConnectionLost",
           "MeshRequestError"]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 65_536  # what the broker accepts from us (A.2: a larger frame is closed with 1009)

# What we accept from the broker. The issue that asked for a cap suggested "a little above 64 KiB",
# but that bounds only what the broker *relays* one message at a time (a push carries one row). The
# largest legitimate frame is a reply that carries many rows: a ``topic_history_response`` page holds
# up to 200 rows (the broker clamps ``limit`` to 1..200, B.42, and the poller pages back with 200),
# and each row's nonce + ciphertext came from a ``send`` frame the broker accepted, so it is under
# 65,536 bytes (B.2, B.22); a row's other fields (ids, pubkeys, senderName, bodyVersion, replyToId,
# createdAt, keys) take a few hundred bytes, given _ROW_OVERHEAD. That is 200 x (64 KiB + 2 KiB) =
# 13.5 MB for a page of maximal posts; ``list_peers`` (at most 100 connections per mesh, B.18, each
# with a summary and a profile from frames under 64 KiB) stays below that too. A cap of 64 KiB would
# close the connection on any history page holding two large posts, and the poller would ask for the
# same page again after every reconnect: the topic would be blinded. So the cap is 16 MiB, above the
# bound with room to spare, and far below the 200 MiB frame that took the process to 621 MB.
_HISTORY_PAGE_ROWS = 200
_ROW_OVERHEAD = 2_048
MAX_INBOUND_FRAME_BYTES = 16 * 1024 * 1024
assert MAX_INBOUND_FRAME_BYTES >= _HISTORY_PAGE_ROWS * (MAX_FRAME_BYTES + _ROW_OVERHEAD)

# The size cap bounds the text, not what parsing it builds: 16 MiB of ``[{},{},...]`` is 5.6 million
# dicts, about 400 MB. Before parsing, the ``{``, ``[`` and ``,`` of a frame are counted (a fast C
# scan that over-counts, since it includes those inside strings); the number of values JSON can build
# is at most that count + 1. A maximal history page has about 200 x 12 of them (base64 bodies hold
# none), a full ``list_peers`` a few thousand; 250,000 leaves ample room and bounds a frame's parsed
# form to tens of MB. A frame over the budget is dropped (counted as ``too_many_values``), not parsed.
MAX_INBOUND_VALUES = 250_000

_BAD_FRAME_LOG_EVERY = 60.0  # seconds: one WARNING per reason per window, DEBUG for the rest
_CLOSE_REASON_REFUSALS = {"session_replaced", "kicked", "banned"}

# Closes of later upstream brokers that mean "your presence is gone, hello again" (not in the spec's
# pinned commit; modelled by the dev broker, see its module docstring). Matched by code or reason.
_PRESENCE_LOST_CLOSES = {
    4004: ("presence_evicted", ("the broker evicted our presence while the socket was open"
                                " (its presence row went stale: pongs lost or late)")),
    4005: ("no_presence", "the broker had no presence for this socket (a zombie connection)"),
}


def _presence_lost(code: int | None, reason: str) -> str | None:
    """``"<code> <name>: <cause>"`` for a 4004/4005 close (by code, or by reason with another code)."""
    for known, (name, cause) in _PRESENCE_LOST_CLOSES.items():
        if code == known or reason == name:
            return f"{code} {name}: {cause}"
    return None


def _size(data: str | bytes) -> str:
    return f"{len(data)} {'characters' if isinstance(data, str) else 'bytes'}"


class MeshRequestError(MeshError):
    """The broker answered a request with an error frame (``code``: ``message``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(MeshError):
    """The socket went away while a request or send was waiting for its answer."""


class _Retry(Exception):
    def __init__(self, human: str, min_delay: float = 0.0) -> None:
        super().__init__(human)
        self.human = human
        self.min_delay = min_delay


class _ClockSkew(_Retry):
    """The broker rejected our timestamp: nothing changes until the system clock does."""


class Connection:
    """The broker connection of one mesh peer. ``state``: connecting|connected|backoff|terminal|stopped.

    A clock skew is terminal until the clock changes: the state is ``terminal``, a waiter with a
    deadline gets the error at once, and the connection reconnects by itself as soon as the system
    clock moves (NTP fixed it) or, at the latest, every ``SKEW_RETRY`` seconds."""

    SKEW_RETRY = 300.0  # seconds between attempts while the clock stays where it is
    SKEW_CHECK = 1.0  # how often the clock is compared with the monotonic clock
    SKEW_JUMP = 2.0  # a change of the wall clock's offset larger than this is "the clock was fixed"

    def __init__(
        self, name: str, cfg: Any, ident: SessionIdentity, *,
        on_push: Callable[[dict[str, Any], int], None],
        on_connected: Callable[[dict[str, Any], bool], Awaitable[None] | None] | None = None,
        on_state: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time, presence_id: str | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.ident = ident
        self._on_push = on_push
        self._on_connected = on_connected
        self._on_state = on_state
        self._clock = clock
        self.state = "stopped"
        self.detail = ""
        self.last_error: str | None = None
        self.reconnects = 0
        self.connects = 0
        self.presence_id: str | None = presence_id  # the last lease we held (persisted across restarts)
        self.hello_ack: dict[str, Any] = {}
        self.connected_since: float | None = None
        self.terminal_error: MeshTerminalError | None = None
        self.skew_error: MeshTerminalError | None = None  # set while the broker rejects our clock
        self._skewed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._dead = asyncio.Event()  # terminal or stopped
        self._stop = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._send_lock = asyncio.Lock()
        self._seq = itertools.count(1)
        self._attempt = 0
        self._attest_failures = 0
        self._refusal: dict[str, Any] | None = None
        self._hello_fut: asyncio.Future[dict[str, Any]] | None = None
        self._last_rx = 0.0
        self._close_reason = ""
        self._immediate = False  # reconnect without backoff (post-reattach redrain)
        self._redrain_pending = False
        self._redrain_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self.bad_frames: Counter[str] = Counter()  # reason -> frames dropped (see the module docstring)
        self._bad_logged: dict[str, float] = {}  # reason -> monotonic time of the last WARNING
        self._oversized = False  # this socket ended because the broker sent a frame over the inbound cap
        self._no_presence = False  # the broker answered no_hello after our hello_ack: it lost our presence
        self._rx_size = 0  # length of the frame being dispatched (the push queue is bounded in bytes)
        self._oversized_run = 0  # consecutive sockets that ended that way (backoff grows with it, even
        # though each of them was acknowledged, which resets the ordinary backoff)

    # -- lifecycle ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._stop.clear()
        self._dead.clear()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=self.cfg.request_timeout))
        self._task = asyncio.create_task(self._run(), name=f"mesh:{self.name}:connection")

    async def stop(self) -> None:
        self._stop.set()
        if self._redrain_task is not None:
            self._redrain_task.cancel()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await with_timeout(ws.close(), 2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for t in list(self._bg):
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._fail_waiters(MeshError(f"mesh {self.name}: peer stopped"))
        if self.terminal_error is None:
            self._set_state("stopped")
        self._dead.set()

    @property
    def connected(self) -> bool:
        return self.state == "connected" and self._ws is not None and not self._ws.closed

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected; raise MeshTerminalError / MeshError (stopped) / MeshTimeout."""
        if self.connected:
            return
        self._raise_if_dead(timeout is not None)
        waits = {asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._dead.wait())}
        if timeout is not None:  # a caller with a deadline hears of a clock skew at once
            waits.add(asyncio.ensure_future(self._skewed.wait()))
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self.connected:
            return
        self._raise_if_dead(timeout is not None)
        if not done:
            why = f" (last error: {self.last_error})" if self.last_error else ""
            raise MeshTimeout(f"mesh {self.name}: not connected within {timeout:.0f}s{why}")
        raise MeshError(f"mesh {self.name}: not connected")

    def _raise_if_dead(self, skew: bool = False) -> None:
        if self.terminal_error is not None:
            raise self.terminal_error
        if skew and self.skew_error is not None:
            raise self.skew_error
        if self._stop.is_set():
            raise MeshError(f"mesh {self.name}: peer stopped")

    # -- state ----------------------------------------------------------------------------------------------------
    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state and detail == self.detail:
            return
        self.state, self.detail = state, detail
        if state == "connected":
            self._connected.set()
        else:
            self._connected.clear()
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:  # an observer must never break the connection
                log.exception("mesh %s: on_state callback failed", self.name)

    # -- the reconnect loop -----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                self.reconnects += 1
            first = False
            self._set_state("connecting")
            min_delay = 0.0
            skew = ""
            try:
                await self._session()
            except MeshTerminalError as exc:
                self._terminal(exc)
                return
            except _ClockSkew as exc:
                skew = exc.human
            except _Retry as exc:
                self.last_error = exc.human
                min_delay = exc.min_delay
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.last_error = f"cannot reach broker: {type(exc).__name__}: {exc}"
                log.warning("mesh %s: %s", self.name, self.last_error)
            except Exception as exc:  # the loop is a boundary: never die silently, retry with backoff
                self.last_error = f"unexpected {type(exc).__name__}: {exc}"
                log.exception("mesh %s: connection failed unexpectedly", self.name)
            finally:
                self._ws = None
                self._fail_waiters(ConnectionLost(f"mesh {self.name}: connection lost"))
            if self._stop.is_set():
                break
            if skew:
                await self._until_clock_changes(skew)
                continue
            if self._immediate:
                self._immediate = False
                continue
            delay = max(self._next_delay(), min_delay)
            self._set_state("backoff", self.last_error or "")
            log.info("mesh %s: reconnecting in %.1fs", self.name, delay)
            await wait_event(self._stop, delay)

    async def _until_clock_changes(self, human: str) -> None:
        """Terminal for the broker's sake (no reconnect storm) until the wall clock moves."""
        self.last_error = human
        self.skew_error = MeshTerminalError("timestamp_skew", human)
        self._skewed.set()
        self._set_state("terminal", f"{human}; reconnecting when the system clock changes")
        offset = self._clock() - time.monotonic()
        waited = 0.0
        try:
            while not self._stop.is_set() and waited < self.SKEW_RETRY:
                if await wait_event(self._stop, self.SKEW_CHECK):
                    return
                waited += self.SKEW_CHECK
                moved = (self._clock() - time.monotonic()) - offset
                if abs(moved) > self.SKEW_JUMP:
                    log.warning("mesh %s: the system clock moved by %+.0fs; reconnecting", self.name, moved)
                    return
        finally:
            self.skew_error = None
            self._skewed.clear()

    def _next_delay(self) -> float:
        steps = self.cfg.backoff
        base = steps[min(self._attempt, len(steps) - 1)]
        self._attempt += 1
        j = self.cfg.backoff_jitter
        return max(0.0, base * random.uniform(1 - j, 1 + j))

    def _terminal(self, exc: MeshTerminalError) -> None:
        self.terminal_error = exc
        self.last_error = exc.human_message
        log.error("mesh %s: giving up: %s", self.name, exc.human_message)
        self._set_state("terminal", exc.human_message)
        self._fail_waiters(exc)
        self._dead.set()

    def _fail_waiters(self, exc: Exception) -> None:
        for table in (self._pending, self._acks):
            for fut in table.values():
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: a waiter may already have given up
            table.clear()
        if self._hello_fut is not None and not self._hello_fut.done():
            self._hello_fut.cancel()

    # -- one socket -------------------------------------------------------------------------------------------------
    async def _session(self) -> None:
        assert self._http is not None
        self._refusal = None
        self._close_reason = ""
        self._oversized = False
        self._no_presence = False
        ws = await self._http.ws_connect(
            self.cfg.broker_url, autoping=False, autoclose=True, heartbeat=None,
            max_msg_size=MAX_INBOUND_FRAME_BYTES,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        )
        self._ws = ws
        self._last_rx = time.monotonic()
        loop = asyncio.get_running_loop()
        self._hello_fut = loop.create_future()
        reader = asyncio.create_task(self._read(ws), name=f"mesh:{self.name}:reader")
        watchdog: asyncio.Task[None] | None = None
        try:
            now_ms = int(self._clock() * 1000)
            build = build_session_hello if self.cfg.handshake == "session" else build_hello
            await self._send_raw(ws, build(self.cfg, self.ident, now_ms))
            done, _ = await asyncio.wait({self._hello_fut, reader}, timeout=self.cfg.hello_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if self._hello_fut.done() and not self._hello_fut.cancelled():
                pass  # _dispatch marked us connected as the ack arrived
            elif not done:
                log.warning("mesh %s: hello not acknowledged within %.0fs (check cwd/pid/sessionId, clock)",
                            self.name, self.cfg.hello_timeout)
                await self._close(ws)
                raise _Retry("hello not acknowledged (check cwd/pid/sessionId, clock)")
            else:
                await reader
                self._raise_for_close(ws, during_hello=True)
            watchdog = asyncio.create_task(self._watchdog(ws), name=f"mesh:{self.name}:watchdog")
            await reader
            self._raise_for_close(ws, during_hello=False)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if not ws.closed:
                await self._close(ws)
            if self._redrain_task is not None:
                self._redrain_task.cancel()
                self._redrain_task = None
            if self.state == "connected":
                self.connected_since = None

    def _acknowledged(self, ws: aiohttp.ClientWebSocketResponse, ack: dict[str, Any]) -> None:
        presence = ack.get("presenceId") if isinstance(ack.get("presenceId"), str) else None
        reattached = presence is not None and presence == self.presence_id  # our lease survived the outage
        self.presence_id = presence
        self.hello_ack = ack
        self.connects += 1
        self._attempt = 0
        self._attest_failures = 0
        self.last_error = None
        self.connected_since = time.time()
        log.info("mesh %s: connected (presence %s%s)", self.name, presence, ", reattached" if reattached else "")
        self._set_state("connected")
        redrain = self._redrain_pending
        self._redrain_pending = False
        if reattached and self.cfg.post_reattach_redrain and not redrain:
            self._redrain_task = asyncio.create_task(self._redrain(ws), name=f"mesh:{self.name}:redrain")
        if self._on_connected is not None:
            self._spawn(self._on_connected(ack, reattached))

    async def _redrain(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """A.6: DMs claimed for our dead socket come back only on a later drain trigger:
        reconnect once more on the same identity after the claims expired."""
        await asyncio.sleep(self.cfg.reattach_redrain_delay)
        if ws is self._ws and not ws.closed and not self._stop.is_set():
            log.info("mesh %s: reconnecting once to re-drain direct messages held during the outage", self.name)
            self._immediate = True
            self._redrain_pending = True
            await self._close(ws)

    def _spawn(self, aw: Any) -> None:
        if not asyncio.iscoroutine(aw) and not isinstance(aw, asyncio.Future):
            return
        task = asyncio.ensure_future(aw)
        self._bg.add(task)
        task.add_done_callback(self._bg_done)

    def _bg_done(self, task: asyncio.Task[Any]) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("mesh %s: post-connect task failed: %s", self.name, task.exception())

    def _raise_for_close(self, ws: aiohttp.ClientWebSocketResponse, *, during_hello: bool) -> None:
        code = ws.close_code
        reason = self._close_reason
        if self._stop.is_set():
            return
        if not self._oversized:
            self._oversized_run = 0  # only sockets ended by oversized frames in a row grow the backoff
        refusal: Refusal | None = None
        if self._refusal is not None:
            refusal = classify_refusal(str(self._refusal.get("code") or ""), str(self._refusal.get("message") or ""))
        elif code == 4002:
            refusal = classify_refusal("banned")
        elif code == 4001:
            refusal = classify_refusal("kicked")
        elif reason in _CLOSE_REASON_REFUSALS:
            refusal = classify_refusal(reason)
        if refusal is None and self._oversized:
            self._oversized_run += 1
            steps = self.cfg.backoff
            what = (f"the broker sent a frame over the {MAX_INBOUND_FRAME_BYTES}-byte inbound limit; "
                    "the connection was closed (1009)")
            log.error("mesh %s: %s; reconnecting", self.name, what)
            raise _Retry(what, min_delay=steps[min(self._oversized_run - 1, len(steps) - 1)])
        if refusal is None:
            lost = _presence_lost(code, reason)
            if lost is not None:
                what = f"broker closed the connection with {lost}"
                log.warning("mesh %s: %s; reconnecting with a new hello", self.name, what)
                raise _Retry(what)
            if self._no_presence:
                raise _Retry("the broker answered no_hello after hello_ack: it has no presence for this socket")
            if code == 1009:
                log.error("mesh %s: broker closed with 1009 (frame too large): this is a bug", self.name)
            what = f"connection closed (code {code}{', ' + reason if reason else ''})"
            if self._immediate:
                return
            log.warning("mesh %s: %s", self.name, what)
            raise _Retry(what)
        if refusal.action == "terminal":
            raise MeshTerminalError(refusal.code, refusal.human)
        if refusal.action == "attestation":
            self._attest_failures += 1
            if self._attest_failures > 1:
                raise MeshTerminalError(refusal.code, refusal.human)
            log.warning("mesh %s: %s; re-minting once", self.name, refusal.human)
            raise _Retry(refusal.human)
        if refusal.action == "skew":
            log.error("mesh %s: %s", self.name, refusal.human)
            raise _ClockSkew(refusal.human)
        if refusal.action == "capacity":
            log.error("mesh %s: %s", self.name, refusal.human)
            raise _Retry(refusal.human, min_delay=self.cfg.capacity_backoff)
        log.warning("mesh %s: broker refused: %s", self.name, refusal.human)
        raise _Retry(refusal.human)

    async def _close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await with_timeout(ws.close(), 3.0)

    # -- reading ---------------------------------------------------------------------------------------------------------
    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            self._last_rx = time.monotonic()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self._dispatch_raw(msg.data)
            elif msg.type == aiohttp.WSMsgType.PING:
                with contextlib.suppress(Exception):
                    await ws.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                continue
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                self._close_reason = str(msg.extra or "")
                return
            elif msg.type == aiohttp.WSMsgType.ERROR and ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                self._oversized = True  # aiohttp refused the frame from its header and closed with 1009
                self.bad_frames["oversized"] += 1
                return
            else:  # CLOSING, CLOSED, ERROR
                return

    def _bad_frame(self, reason: str, detail: str, *, exc_info: bool = False) -> None:
        """Count a dropped frame; one WARNING per reason per minute, DEBUG for the rest."""
        self.bad_frames[reason] += 1
        now = time.monotonic()
        last = self._bad_logged.get(reason)
        if last is None or now - last >= _BAD_FRAME_LOG_EVERY:
            self._bad_logged[reason] = now
            total = self.bad_frames[reason]
            log.warning("mesh %s: dropped a frame from the broker: %s (%s frame%s dropped for this reason so far)",
                        self.name, detail, total, "" if total == 1 else "s", exc_info=exc_info)
        else:
            log.debug("mesh %s: dropped a frame from the broker: %s", self.name, detail)

    def _dispatch_raw(self, data: str | bytes) -> None:
        if isinstance(data, str):
            values = data.count("{") + data.count("[") + data.count(",")
        else:
            values = data.count(b"{") + data.count(b"[") + data.count(b",")
        if values > MAX_INBOUND_VALUES:
            self._bad_frame("too_many_values", f"{_size(data)} with over {MAX_INBOUND_VALUES} JSON values")
            return
        try:
            frame = json.loads(data)
        except RecursionError:
            self._bad_frame("too_deep", f"JSON nested too deeply ({_size(data)})")
            return
        except (ValueError, UnicodeDecodeError):
            self._bad_frame("not_json", f"not JSON ({_size(data)})")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self._bad_frame("no_type", "not a JSON object with a string \"type\"")
            return
        self._rx_size = len(data)
        try:
            self._dispatch(frame)
        except Exception as exc:  # noqa: BLE001 - a broker frame must never kill the reader (logged with traceback)
            ftype = frame["type"][:40]
            self._bad_frame("handler_failed", f"handling a {ftype!r} frame failed: {type(exc).__name__}: "
                            f"{str(exc)[:200]}", exc_info=True)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        ftype = frame["type"]
        if ftype == "hello_ack":
            if self._hello_fut is not None and not self._hello_fut.done() and self._ws is not None:
                self._hello_fut.set_result(frame)
                self._acknowledged(self._ws, frame)  # connected before the next frame is dispatched
            return
        if ftype == "push":
            self._on_push(frame, self._rx_size)
            return
        if ftype == "ack":
            fid = frame.get("id")
            fut = self._acks.get(fid) if isinstance(fid, str) else None
            if fut is None:
                fut = self._pending_for(frame)
            if fut is not None and not fut.done():
                fut.set_result(frame)
            else:
                log.debug("mesh %s: ack for nothing we wait for", self.name)
            return
        if ftype == "error":
            fut = self._pending_for(frame)
            code, message = str(frame.get("code") or ""), str(frame.get("message") or "")
            if fut is not None:
                if not fut.done():
                    fut.set_exception(MeshRequestError(code, message))
                return
            if self.state != "connected" and code != "no_hello":
                self._refusal = frame
                log.warning("mesh %s: handshake refused: %s: %s", self.name, code, message)
            elif code == "no_hello" and self.state == "connected":
                self._presence_gone()
            else:  # a late reply to a request that timed out, or a broker talking to nobody: rate-limited
                self._bad_frame("unsolicited_error", f"error {code[:60]!r} for nothing we wait for: {message[:200]}")
            return
        fut = self._pending_for(frame)
        if fut is not None:
            if not fut.done():
                fut.set_result(frame)
            return
        log.debug("mesh %s: ignoring unsolicited %s frame", self.name, ftype)

    def _presence_gone(self) -> None:
        """``no_hello`` after our ``hello_ack``: the broker holds no presence for this socket (a zombie:
        no pushes, invisible to ``list_peers``). A pinned-commit broker never closes such a socket and a
        later one only after its 30 s zombie sweep (4005), so close it now and hello again."""
        ws = self._ws
        if self._no_presence or ws is None or ws.closed:
            return
        self._no_presence = True
        log.warning("mesh %s: the broker says no_hello on a connected socket (our presence is gone); "
                    "reconnecting", self.name)
        self._spawn(self._close(ws))

    def _pending_for(self, frame: dict[str, Any]) -> asyncio.Future[dict[str, Any]] | None:
        for key in ("_reqId", "id"):
            rid = frame.get(key)
            if isinstance(rid, str) and rid in self._pending:
                return self._pending[rid]
        return None

    # -- keepalive ---------------------------------------------------------------------------------------------------------
    async def _watchdog(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        step = min(self.cfg.ping_interval, self.cfg.idle_timeout)
        while not ws.closed:
            await asyncio.sleep(step)
            idle = time.monotonic() - self._last_rx
            if idle > self.cfg.idle_timeout:
                log.warning("mesh %s: nothing received for %.0fs; reconnecting", self.name, idle)
                await self._close(ws)
                return
            with contextlib.suppress(Exception):
                await ws.ping()

    # -- sending ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def encode(frame: dict[str, Any]) -> str:
        text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        size = len(text.encode("utf-8"))
        if size > MAX_FRAME_BYTES:
            raise DeliveryError(f"{frame.get('type')} frame is {size} bytes, over the broker's "
                                f"{MAX_FRAME_BYTES}-byte limit; split the text", permanent=True)
        return text

    async def _send_raw(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
        text = self.encode(frame)
        async with self._send_lock:
            await ws.send_str(text)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send on the live socket (after hello_ack); MeshError if there is none."""
        ws = self._ws
        text = self.encode(frame)
        if ws is None or ws.closed or self.state != "connected":
            raise ConnectionLost(f"mesh {self.name}: not connected")
        async with self._send_lock:
            try:
                await ws.send_str(text)
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                raise ConnectionLost(f"mesh {self.name}: send failed ({type(exc).__name__})") from exc

    async def send_nowait(self, frame: dict[str, Any]) -> bool:
        """Fire and forget (client_ack, topic_join, ...). False if not connected."""
        try:
            await self.send_frame(frame)
            return True
        except ConnectionLost:
            return False

    async def request(self, frame: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send a verb with a fresh ``_reqId`` and wait for the reply that echoes it (in ``_reqId`` or ``id``)."""
        timeout = self.cfg.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        await self.wait_connected(timeout)
        rid = f"req-{next(self._seq)}-{uuid.uuid4().hex[:8]}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.send_frame({**frame, "_reqId": rid})
            return await with_timeout(fut, max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise MeshTimeout(f"mesh {self.name}: no reply to {frame.get('type')} within {timeout:.0f}s") from None
        finally:
            self._pending.pop(rid, None)

    async def send_with_ack(self, frame: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a ``send`` frame and wait for the ``ack`` carrying its ``id``."""
        fid = frame["id"]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[fid] = fut
        try:
            await self.send_frame(frame)
            return await with_timeout(fut, timeout)
        finally:
            if self._acks.get(fid) is fut:
                del self._acks[fid]
