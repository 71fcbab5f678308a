"""Per-member token bucket (apps/broker/src/rate-limit.ts): start full, continuous refill."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    def __init__(self, burst: int, per_minute: float, idle_s: float = 600.0) -> None:
        self.burst = burst
        self.per_minute = per_minute
        self.idle_s = idle_s
        self._buckets: dict[str, _Bucket] = {}

    def configure(self, burst: int, per_minute: float) -> None:
        """Change the limits; existing buckets restart full."""
        self.burst = burst
        self.per_minute = per_minute
        self._buckets.clear()

    def take(self, key: str, now: float | None = None) -> bool:
        """Take one token; a refused take costs nothing."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.per_minute / 60.0)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def prune(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        stale = [k for k, b in self._buckets.items() if now - b.updated > self.idle_s]
        for k in stale:
            del self._buckets[k]
        return len(stale)

    def __len__(self) -> int:
        return len(self._buckets)
