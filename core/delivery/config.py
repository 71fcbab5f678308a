"""Delivery settings: retries, backoff, concurrency, shutdown and default rate limits."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..confcheck import check_format_template
from ..gateway import RateLimit

__all__ = ["SCOPE_FIELDS", "VENDOR_DEFAULT_LIMITS", "DeliveryConfig", "LimitSpec", "backoff_delay"]


#: the fields a rate-limit ``scope`` template may use
SCOPE_FIELDS = frozenset({"gateway", "chat", "thread", "lane"})


class LimitSpec(BaseModel):
    """A token bucket template. ``scope`` may use ``{gateway}``, ``{chat}``, ``{thread}`` and ``{lane}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scope: str = Field(min_length=1)
    per_second: float = Field(gt=0)
    burst: float = Field(default=1.0, ge=1)

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        check_format_template(v, SCOPE_FIELDS)
        return v

    def resolve(self, destination: Mapping[str, Any], lane: str) -> RateLimit:
        scope = self.scope.format(
            gateway=destination.get("gateway", ""), chat=destination.get("chat", ""),
            thread=destination.get("thread") or "", lane=lane,
        )
        return RateLimit(scope=scope, per_second=self.per_second, burst=self.burst)


# From shared/spec/vendor-limits.md. They apply only when a gateway declares no limits of its own
# for a destination and the gateway instance carries the platform's name; every in-tree gateway
# declares its own (configurable) RateLimit objects, so these are a safety net.
VENDOR_DEFAULT_LIMITS: dict[str, tuple[LimitSpec, ...]] = {
    "telegram": (
        LimitSpec(scope="{gateway}:chat:{chat}", per_second=1.0, burst=3),
        LimitSpec(scope="{gateway}:global", per_second=30.0, burst=30),
    ),
    "slack": (LimitSpec(scope="{gateway}:chat:{chat}", per_second=1.0, burst=3),),
    "whatsapp": (LimitSpec(scope="{gateway}:global", per_second=80.0, burst=80),),
}


class DeliveryConfig(BaseModel):
    """The ``[delivery]`` table.

    Backoff for attempt *n* (1-based) is ``min(cap, base * factor**(n-1))``, reduced by a random
    fraction up to ``backoff_jitter`` so that lanes failing together do not retry together. A
    vendor ``retry_after`` replaces the backoff for that attempt and does not count as an attempt.
    After ``max_attempts`` failed attempts (``max_attempts_unexpected`` when the error was not a
    ``DeliveryError``, i.e. a bug or an unclassified exception) or once an item is older than
    ``max_age`` seconds, it goes to the dead letters.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    backoff_base: float = Field(default=1.0, gt=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_cap: float = Field(default=300.0, gt=0)
    backoff_jitter: float = Field(default=0.2, ge=0, le=1)
    max_attempts: int = Field(default=12, ge=1)
    max_attempts_unexpected: int = Field(default=5, ge=1)
    max_age: float = Field(default=86400.0, gt=0)
    retry_after_floor: float = Field(default=1.0, ge=0)  # least wait honoured for a vendor retry_after
    concurrency: int = Field(default=256, ge=1)  # lanes delivering at the same time
    prefetch: int = Field(default=32, ge=1, le=1000)  # items read per lane per store query
    drain_timeout: float = Field(default=10.0, ge=0)
    send_timeout: float = Field(default=120.0, ge=0)  # one part; a hung send is a transient failure (0: none)
    # files carried between platforms: fetched from the source gateway at send time, at most this
    # big (0: never, destinations get a description); the bytes held at once never exceed
    # attachment_fetches * attachment_max_bytes (a message whose files would is trimmed, the rest described)
    attachment_max_bytes: int = Field(default=20 * 1024 * 1024, ge=0)
    attachment_fetches: int = Field(default=4, ge=1, le=64)
    poll_interval: float = Field(default=5.0, gt=0)  # safety poll (dlq retries from another process)
    bucket_idle_ttl: float = Field(default=900.0, gt=0)  # forget full, idle token buckets after this
    default_limits: dict[str, tuple[LimitSpec, ...]] = Field(
        default_factory=lambda: dict(VENDOR_DEFAULT_LIMITS)
    )  # keyed by destination gateway (instance) name
    fallback_limits: tuple[LimitSpec, ...] = ()  # for any other gateway that declares none

    @model_validator(mode="after")
    def _check(self) -> DeliveryConfig:
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must be >= backoff_base")
        return self

    def limits_for(self, destination: Mapping[str, Any], lane: str) -> tuple[RateLimit, ...]:
        specs = self.default_limits.get(str(destination.get("gateway", "")), self.fallback_limits)
        return tuple(s.resolve(destination, lane) for s in specs)


def backoff_delay(attempt: int, cfg: DeliveryConfig, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` failures (attempt >= 1)."""
    n = max(1, attempt) - 1
    try:
        d = cfg.backoff_base * math.pow(cfg.backoff_factor, n)
    except OverflowError:
        d = cfg.backoff_cap
    d = min(cfg.backoff_cap, d)
    if cfg.backoff_jitter:
        d *= 1.0 - cfg.backoff_jitter * (rng or random).random()
    return d
