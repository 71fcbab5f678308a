"""The broker's per-member token bucket, mirrored locally in front of the send queue (A.7.3)."""

from __future__ import annotations

import asyncio
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``per_minute``/60 per second. Starts full."""

    def __init__(self, burst: int, per_minute: float, *, clock=time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def wait_time(self) -> float:
        """Seconds until one token is available (0 if one is now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    async def acquire(self) -> float:
        """Take one token, sleeping as long as needed (FIFO among waiters). Returns seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                delay = self.wait_time()
                if delay <= 0:
                    self._tokens -= 1
                    return waited
                await asyncio.sleep(delay)
                waited += delay

    def drain(self) -> None:
        """The broker said rate_limit: another process shares our member; assume the bucket is empty."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)
