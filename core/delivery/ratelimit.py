"""Token buckets keyed by :class:`~claudemesh_gateway.gateway.RateLimit` scope.

A send may need several buckets at once (per chat, per group, global per bot). The limiter
takes one token from *every* bucket at the same instant, or none: it never holds a token
of one bucket while it waits for another (that would let sends bunch up behind a slow
bucket and break the vendor limit).

Fairness: a lane that must wait joins the queue of the bucket(s) that bind it (those with the
longest wait); its wait is computed for its position (``position + 1`` tokens must have
accrued), so lanes contending for a shared bucket are served in arrival order. A lane holds no
place in a bucket that does not bind it, so a lane stalled on its own per-chat bucket never
delays other lanes on a shared bucket.

A Retry-After on a shared scope (``pause``) empties that bucket until the given time: every
lane using the scope waits, lanes not using it are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable

from ..gateway import RateLimit

__all__ = ["RateLimiter", "TokenBucket"]

log = logging.getLogger(__name__)

_EPS = 1e-9


class TokenBucket:
    __slots__ = ("burst", "last_used", "paused_until", "per_second", "queue", "scope", "tokens", "updated")

    def __init__(self, scope: str, per_second: float, burst: float, now: float) -> None:
        if per_second <= 0:
            raise ValueError(f"rate limit {scope!r}: per_second must be > 0")
        self.scope = scope
        self.per_second = float(per_second)
        self.burst = max(1.0, float(burst))
        self.tokens = self.burst
        self.updated = now
        self.paused_until = 0.0
        self.queue: dict[Hashable, None] = {}  # waiting lanes in arrival order
        self.last_used = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_second)
            self.updated = now

    def eta(self, now: float, who: Hashable) -> float:
        """Seconds until ``who`` may take a token, given the waiters ahead of it."""
        self._refill(now)
        pause = self.paused_until - now
        pos = len(self.queue)
        if who in self.queue:
            pos = next(i for i, w in enumerate(self.queue) if w == who)
        need = pos + 1 - self.tokens
        wait = need / self.per_second if need > _EPS else 0.0
        return max(pause, wait, 0.0)

    def take(self, now: float, who: Hashable) -> None:
        self._refill(now)
        self.tokens -= 1.0
        self.queue.pop(who, None)
        self.last_used = now

    def pause(self, now: float, until: float) -> None:
        """Vendor said stop until ``until``: no token before then, then refill from empty."""
        self._refill(now)
        self.paused_until = max(self.paused_until, until)
        self.tokens = 0.0
        self.updated = max(self.updated, self.paused_until)

    def idle(self, now: float, ttl: float) -> bool:
        self._refill(now)
        return (
            not self.queue and self.paused_until <= now and self.tokens >= self.burst - _EPS
            and now - self.last_used >= ttl
        )


class RateLimiter:
    """All token buckets of the process, created on first use from the RateLimit objects."""

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        idle_ttl: float = 900.0,
    ) -> None:
        self.monotonic = monotonic
        self.sleep = sleep
        self.idle_ttl = idle_ttl
        self.buckets: dict[str, TokenBucket] = {}
        self.waits = 0  # acquisitions that had to wait
        self.wait_seconds = 0.0
        self._since_gc = 0

    def bucket(self, limit: RateLimit, now: float | None = None) -> TokenBucket:
        b = self.buckets.get(limit.scope)
        if b is None:
            b = TokenBucket(limit.scope, limit.per_second, limit.burst, self.monotonic() if now is None else now)
            self.buckets[limit.scope] = b
        elif b.per_second != limit.per_second or b.burst != max(1.0, limit.burst):
            # configuration changed (reload): keep the accrued state, apply the new rate
            b._refill(self.monotonic() if now is None else now)
            b.per_second = float(limit.per_second)
            b.burst = max(1.0, float(limit.burst))
            b.tokens = min(b.tokens, b.burst)
        return b

    def pause(self, scope: str, seconds: float) -> bool:
        """Pause bucket ``scope`` for ``seconds`` (a vendor Retry-After on a shared scope)."""
        b = self.buckets.get(scope)
        if b is None:
            return False
        now = self.monotonic()
        b.pause(now, now + max(0.0, seconds))
        log.info("rate limit scope %s paused for %.1fs", scope, seconds)
        return True

    async def acquire(self, limits: Iterable[RateLimit], who: Hashable) -> float:
        """Take one token from every bucket in ``limits`` at once; returns the seconds waited."""
        now = self.monotonic()
        seen: set[str] = set()
        buckets: list[TokenBucket] = []
        for lim in limits:
            if lim.scope not in seen:
                seen.add(lim.scope)
                buckets.append(self.bucket(lim, now))
        if not buckets:
            return 0.0
        self._since_gc += 1
        if self._since_gc >= 1024:
            self._since_gc = 0
            self.gc(now)
        waited = 0.0
        counted = False
        try:
            while True:
                etas = [b.eta(now, who) for b in buckets]
                wait = max(etas)
                # queue only where this lane is bound: a lane held back by its own per-chat
                # bucket must not hold a place (and a token) in a shared bucket meanwhile
                for b, w in zip(buckets, etas, strict=True):
                    if w > 0.0 and w >= wait - _EPS:
                        b.queue.setdefault(who, None)
                    else:
                        b.queue.pop(who, None)
                if wait <= 0.0:
                    for b in buckets:
                        b.take(now, who)
                    return waited
                if not counted:
                    counted = True
                    self.waits += 1
                await self.sleep(wait)
                t = self.monotonic()
                waited += t - now
                self.wait_seconds += t - now
                now = t
        finally:
            for b in buckets:
                b.queue.pop(who, None)

    def gc(self, now: float | None = None) -> int:
        """Drop buckets that are full, unpaused, unwaited and unused for ``idle_ttl``."""
        now = self.monotonic() if now is None else now
        dead = [s for s, b in self.buckets.items() if b.idle(now, self.idle_ttl)]
        for s in dead:
            del self.buckets[s]
        return len(dead)
