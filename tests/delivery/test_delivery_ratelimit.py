"""Token buckets, the multi-scope limiter and the delivery config."""

from __future__ import annotations

import asyncio
import random

import pytest
from claudemesh_gateway.delivery import DeliveryConfig, LimitSpec, RateLimiter, TokenBucket, backoff_delay
from claudemesh_gateway.gateway import RateLimit
from pydantic import ValidationError


def test_delivery_bucket_refill_and_burst() -> None:
    b = TokenBucket("s", per_second=2, burst=3, now=0.0)
    assert b.eta(0.0, "a") == 0.0
    for _ in range(3):
        b.take(0.0, "a")
    assert b.eta(0.0, "a") == pytest.approx(0.5)
    assert b.eta(0.5, "a") == 0.0
    assert b.eta(100.0, "a") == 0.0 and b.tokens == 3  # never above the burst


def test_delivery_bucket_queue_position_sets_the_wait() -> None:
    b = TokenBucket("s", per_second=1, burst=1, now=0.0)
    b.take(0.0, "x")
    b.queue["a"] = None
    b.queue["b"] = None
    assert b.eta(0.0, "a") == pytest.approx(1.0)
    assert b.eta(0.0, "b") == pytest.approx(2.0)  # behind a
    assert b.eta(0.0, "c") == pytest.approx(3.0)  # not queued yet: behind both


def test_delivery_bucket_pause_empties_it() -> None:
    b = TokenBucket("s", per_second=10, burst=10, now=0.0)
    b.pause(0.0, 5.0)
    assert b.eta(0.0, "a") == pytest.approx(5.0)
    assert b.eta(5.0, "a") == pytest.approx(0.1)  # refills from empty after the pause
    assert b.eta(6.0, "a") == 0.0


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.t += d
        await asyncio.sleep(0)


async def test_delivery_limiter_takes_all_scopes_at_once() -> None:
    ft = FakeTime()
    lim = RateLimiter(monotonic=ft.monotonic, sleep=ft.sleep)
    chat = RateLimit(scope="chat", per_second=1, burst=1)
    glob = RateLimit(scope="global", per_second=100, burst=5)
    assert await lim.acquire([chat, glob, chat], "lane") == 0.0  # a duplicate scope counts once
    assert lim.buckets["chat"].tokens == 0 and lim.buckets["global"].tokens == 4
    waited = await lim.acquire([chat, glob], "lane")
    assert waited == pytest.approx(1.0) and lim.waits == 1
    # waiting on the chat bucket did not hold a place (or a token) in the global one
    assert lim.buckets["global"].queue == {}
    assert await lim.acquire([], "lane") == 0.0


async def test_delivery_limiter_lane_held_by_own_bucket_does_not_block_shared() -> None:
    ft = FakeTime()
    lim = RateLimiter(monotonic=ft.monotonic, sleep=ft.sleep)
    glob = RateLimit(scope="g", per_second=1, burst=1)
    slow = RateLimit(scope="chat:slow", per_second=0.01, burst=1)
    await lim.acquire([slow], "slow")  # the slow lane used its only chat token
    gate = asyncio.Event()

    async def never(d: float) -> None:  # the slow lane parks on its own bucket
        await gate.wait()

    lim.sleep = never
    slow_task = asyncio.create_task(lim.acquire([slow, glob], "slow"))
    await asyncio.sleep(0)
    assert "slow" in lim.buckets["chat:slow"].queue and "slow" not in lim.buckets["g"].queue
    lim.sleep = ft.sleep
    assert await lim.acquire([glob], "fast") == 0.0  # the global token is free for another lane
    slow_task.cancel()
    await asyncio.gather(slow_task, return_exceptions=True)
    assert lim.buckets["chat:slow"].queue == {}  # a cancelled waiter leaves every queue


async def test_delivery_limiter_pause_and_reconfigure_and_gc() -> None:
    ft = FakeTime()
    lim = RateLimiter(monotonic=ft.monotonic, sleep=ft.sleep, idle_ttl=10)
    g = RateLimit(scope="bot:global", per_second=10, burst=10)
    await lim.acquire([g], "a")
    assert lim.pause("bot:global", 3.0) and not lim.pause("unknown", 3.0)
    waited = await lim.acquire([g], "b")
    assert waited >= 3.0
    # a reload with a new rate keeps the bucket and applies the rate
    await lim.acquire([RateLimit(scope="bot:global", per_second=1, burst=2)], "a")
    assert lim.buckets["bot:global"].per_second == 1 and lim.buckets["bot:global"].burst == 2
    ft.t += 5
    assert lim.gc() == 0  # used recently
    ft.t += 20
    assert lim.gc() == 1 and lim.buckets == {}


def test_delivery_backoff_delay() -> None:
    cfg = DeliveryConfig(backoff_base=1, backoff_factor=2, backoff_cap=10, backoff_jitter=0)
    assert [backoff_delay(n, cfg) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(10_000, cfg) == 10  # no overflow
    jit = DeliveryConfig(backoff_base=4, backoff_factor=2, backoff_cap=100, backoff_jitter=0.5)
    rng = random.Random(7)
    vals = [backoff_delay(1, jit, rng) for _ in range(200)]
    assert all(2.0 <= v <= 4.0 for v in vals) and len(set(vals)) > 100


def test_delivery_config_validation_and_default_limits() -> None:
    with pytest.raises(ValidationError):
        DeliveryConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DeliveryConfig(backoff_base=10, backoff_cap=5)
    with pytest.raises(ValidationError):
        DeliveryConfig(concurrency=0)
    cfg = DeliveryConfig()
    tg = cfg.limits_for({"gateway": "telegram", "chat": "-100", "thread": None}, "telegram/-100")
    assert [(r.scope, r.per_second, r.burst) for r in tg] == [
        ("telegram:chat:-100", 1.0, 3), ("telegram:global", 30.0, 30)]
    assert cfg.limits_for({"gateway": "webhook", "chat": "x"}, "webhook/x") == ()
    custom = DeliveryConfig(default_limits={}, fallback_limits=(LimitSpec(scope="{lane}", per_second=5),))
    assert custom.limits_for({"gateway": "telegram", "chat": "1"}, "telegram/1") == (
        RateLimit(scope="telegram/1", per_second=5, burst=1),)
