"""Outbox workers, rate limiters, retry/backoff, dead letters."""

from __future__ import annotations

from .config import VENDOR_DEFAULT_LIMITS, DeliveryConfig, LimitSpec, backoff_delay
from .engine import DeliveryEngine, DeliveryStats, Transport
from .ratelimit import RateLimiter, TokenBucket

__all__ = [
    "DeliveryEngine", "DeliveryConfig", "DeliveryStats", "Transport", "LimitSpec", "RateLimiter",
    "TokenBucket", "backoff_delay", "VENDOR_DEFAULT_LIMITS",
]
