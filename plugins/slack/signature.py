"""Slack request signing (Events API, slash commands).

``X-Slack-Signature = "v0=" + hex(HMAC-SHA256(signing_secret, "v0:" + ts + ":" + raw_body))``;
requests whose ``X-Slack-Request-Timestamp`` is more than five minutes away from
our clock are refused (replay window). The comparison is constant-time.

Written out rather than using ``slack_sdk.signature.SignatureVerifier`` because that
one raises ``ValueError`` on a non-numeric timestamp header instead of refusing it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

from claudemesh_gateway.webhooks import MalformedHeader, header_value, parse_unix_timestamp

__all__ = ["WINDOW_S", "SignatureVerifier", "sign"]

WINDOW_S = 300


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack would send for ``body`` at ``timestamp``."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


class SignatureVerifier:
    def __init__(self, secret: str, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("signing secret is empty")
        self._secret = secret
        self._window = window_s
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        """True only for a fresh request carrying a valid v0 signature over ``body``."""
        try:
            ts = header_value(headers, "X-Slack-Request-Timestamp")
            sig = header_value(headers, "X-Slack-Signature")
            if not ts or not sig:
                return False
            when = parse_unix_timestamp(ts)  # at most 12 digits: no float overflow below
        except (MalformedHeader, ValueError):
            return False
        if abs(self._clock() - when) > self._window:
            return False
        expected = sign(self._secret, ts, body)
        return hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii"))
