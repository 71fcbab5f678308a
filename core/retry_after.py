"""The one ``Retry-After`` parser (RFC 9110 §10.2.3) every gateway uses for vendor answers.

A vendor says when to come back as delta-seconds (``"120"``) or as an HTTP-date
(``"Wed, 21 Oct 2015 07:28:00 GMT"``). Either becomes seconds from now, never negative and
capped (:data:`RETRY_AFTER_CAP`, one hour): a hostile or broken answer cannot park a lane for a
day. Anything else (empty, garbage, ``nan``) is ``None``: the caller's own backoff applies.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

__all__ = ["RETRY_AFTER_CAP", "parse_retry_after", "retry_after_header"]

RETRY_AFTER_CAP = 3600.0


def parse_retry_after(value: str | None, *, now: float | None = None, cap: float = RETRY_AFTER_CAP) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or HTTP-date), in ``[0, cap]``; None if unreadable."""
    if not value:
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), cap)


def retry_after_header(headers: Mapping[str, str] | None, *, now: float | None = None,
                       cap: float = RETRY_AFTER_CAP) -> float | None:
    """:func:`parse_retry_after` of the ``Retry-After`` header in ``headers`` (any case; a list value: its first)."""
    for key, value in (headers or {}).items():
        if str(key).lower() == "retry-after":
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            return parse_retry_after(value, now=now, cap=cap)
    return None
