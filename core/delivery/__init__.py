"""Outbox workers, rate limiters, retry/backoff, dead letters."""

from __future__ import annotations

from .config import VENDOR_DEFAULT_LIMITS, DeliveryConfig, LimitSpec, backoff_delay
from .engine import DeliveryEngine, DeliveryStats, Transport
from .ratelimit import RateLimiter, TokenBucket

__all__ = [
    "VENDOR_DEFAULT_LIMITS",
    "DeliveryConfig",
    "DeliveryEngine",
    "DeliveryStats",
    "LimitSpec",
    "RateLimiter",
    "TokenBucket",
    "Transport",
    "backoff_delay",
]
