"""Signatures of the generic webhook gateway, both directions.

``X-Claudemesh-Timestamp: <unix seconds>`` and
``X-Claudemesh-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>``.

Several ``v1=`` values may be sent, comma separated (key rotation); one match is
enough. The timestamp must be within ``tolerance_s`` of our clock, which bounds
replays. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from claudemesh_gateway.webhooks import parse_unix_timestamp

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "SignatureError", "sign", "signature_headers", "verify"]

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Claudemesh-Timestamp"
SIGNATURE_HEADER = "X-Claudemesh-Signature"
_SCHEME = "v1"


class SignatureError(Exception):
    """Why a request failed verification (for the log; the client only sees 401)."""


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """``v1=<hex>`` for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{_SCHEME}={mac}"


def signature_headers(secret: str | bytes, body: bytes, *, now: float | None = None) -> dict[str, str]:
    ts = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body)}


def verify(
    secret: str | bytes,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    tolerance_s: float,
    now: float | None = None,
) -> None:
    """Raise :class:`SignatureError` unless ``signature`` signs ``body`` at a fresh ``timestamp``."""
    if not timestamp or not signature:
        raise SignatureError("missing timestamp or signature header")
    try:
        ts = parse_unix_timestamp(timestamp)  # a bounded number of digits: no float overflow below
    except ValueError:
        raise SignatureError("timestamp is not an integer of Unix seconds") from None
    if not signature.isascii():  # undecodable bytes arrive as lone surrogates; never a valid signature
        raise SignatureError("signature holds non-ASCII characters")
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError(f"timestamp outside the {tolerance_s:.0f}s tolerance")
    expected = sign(secret, ts, body).encode()
    for candidate in signature.split(","):
        candidate = candidate.strip()
        if candidate.startswith(_SCHEME + "=") and hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureError("signature does not match")
