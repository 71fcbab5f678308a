"""``send`` with its ``ack``: local rate limit, ack timeout, and the four ``queued:false`` errors (A.7)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from ..errors import DeliveryError, MeshError, MeshTerminalError
from .connection import MAX_FRAME_BYTES, Connection, ConnectionLost
from .ratelimit import TokenBucket

__all__ = ["Sender", "classify_ack_error"]

log = logging.getLogger(__name__)

RATE_LIMIT = "rate_limit"
TOO_LARGE = "too_large"
NO_PEER = "no_peer"
BLOCKED = "blocked"
UNKNOWN = "unknown"
MAX_RATE_LIMIT_RETRIES = 30  # then hand the item back to the core's retry schedule


def classify_ack_error(error: str) -> str:
    """Map an ack ``error`` string (exact upstream texts, matched by prefix) to a class."""
    e = (error or "").strip().lower()
    if e.startswith("rate_limit"):
        return RATE_LIMIT
    if e.startswith("payload too large"):
        return TOO_LARGE
    if e.startswith("no connected peer"):
        return NO_PEER
    if e.startswith("blocked by recipient grants"):
        return BLOCKED
    return UNKNOWN


class Sender:
    """Sends one ``send`` frame until it is ``queued:true`` or fails for a known reason."""

    def __init__(self, name: str, cfg: Any, conn: Connection, bucket: TokenBucket) -> None:
        self.name = name
        self.cfg = cfg
        self.conn = conn
        self.bucket = bucket
        self.sent = 0
        self.rate_limited = 0

    async def send(self, frame: dict[str, Any], *, retry_window: float | None = None) -> str:
        """Send ``frame`` (its ``id`` == ``client_message_id``) and return the queue ``messageId``.

        Raises :class:`DeliveryError` (permanent for too large / blocked / unknown target after
        ``retry_window`` seconds; transient for timeouts and disconnects)."""
        size = (len(frame.get("ciphertext", "")) + len(frame.get("nonce", "")) + len(frame.get("targetSpec", "")))
        if size > MAX_FRAME_BYTES:
            raise DeliveryError(f"payload is {size} bytes, over the broker's {MAX_FRAME_BYTES}-byte limit; "
                                "split the text", permanent=True)
        Connection.encode(frame)  # refuses a frame over 64 KiB before anything is sent
        retry_window = self.cfg.dm_retry_window if retry_window is None else retry_window
        started = time.monotonic()
        timeouts = 0
        no_peer_attempt = 0
        limited = 0
        while True:
            await self.bucket.acquire()
            try:
                await self.conn.wait_connected(self.cfg.ack_timeout)
            except MeshTerminalError as exc:
                raise DeliveryError(f"mesh {self.name} refused us: {exc.human_message}", retry_after=60) from exc
            except MeshError as exc:
                raise DeliveryError(f"mesh {self.name} is not connected ({exc})", retry_after=5) from exc
            try:
                ack = await self.conn.send_with_ack(frame, self.cfg.ack_timeout)
            except (TimeoutError, ConnectionLost) as exc:
                timeouts += 1
                what = "no ack" if isinstance(exc, TimeoutError) else "connection lost before the ack"
                if timeouts >= 2:
                    raise DeliveryError(f"mesh {self.name}: {what} for send {frame['id']} (after a retry)",
                                        retry_after=5) from None
                log.warning("mesh %s: %s for send %s; retrying once with the same id", self.name, what, frame["id"])
                continue
            if ack.get("queued") is True:
                self.sent += 1
                return str(ack.get("messageId") or "")
            error = str(ack.get("error") or "")
            kind = classify_ack_error(error)
            if kind == RATE_LIMIT:
                self.rate_limited += 1
                limited += 1
                if limited > MAX_RATE_LIMIT_RETRIES:
                    raise DeliveryError(f"mesh {self.name}: broker kept refusing with rate_limit (another process "
                                        "sharing this member?)", retry_after=10)
                self.bucket.drain()
                delay = max(1.0, self.bucket.wait_time())
                log.warning("mesh %s: broker rate limit; resending %s in %.1fs", self.name, frame["id"], delay)
                await asyncio.sleep(delay)
                continue
            if kind == TOO_LARGE:
                raise DeliveryError(f"mesh {self.name}: {error}", permanent=True)
            if kind == BLOCKED:
                raise DeliveryError(f"mesh {self.name}: recipient does not accept our DMs ({error})", permanent=True)
            if kind == NO_PEER:
                elapsed = time.monotonic() - started
                if elapsed >= retry_window:
                    raise DeliveryError(
                        f"mesh {self.name}: no connected peer for target {frame.get('targetSpec', '')[:16]}… "
                        f"(gave up after {elapsed:.0f}s)", permanent=True)
                steps = self.cfg.backoff
                delay = steps[min(no_peer_attempt, len(steps) - 1)] * random.uniform(0.8, 1.2)
                no_peer_attempt += 1
                delay = min(delay, max(0.0, retry_window - elapsed))
                log.info("mesh %s: target not connected; retrying %s in %.1fs", self.name, frame["id"], delay)
                await asyncio.sleep(delay)
                continue
            raise DeliveryError(f"mesh {self.name}: send not queued: {error or 'no reason given'}", retry_after=5)
