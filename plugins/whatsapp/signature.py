"""Twilio webhook signatures (``X-Twilio-Signature``).

Twilio signs ``base64(HMAC-SHA1(auth_token, url + concat(sorted(key + value))))``
where ``url`` is exactly the URL *Twilio* called: scheme, host, port, path and
query. Behind a TLS-terminating proxy the URL this process sees differs, so the
URL is rebuilt from the configured ``public_url`` plus the route's path plus the
raw query string -- never from the ``Host`` header or the local scheme.

For JSON bodies Twilio adds a ``bodySHA256`` query parameter and signs the URL
alone; the body's SHA-256 must then match that parameter.

Every comparison is constant-time (``hmac.compare_digest``). The canonical
string is built with twilio's own :class:`~twilio.request_validator.RequestValidator`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlparse, urlsplit

from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    RequestValidator,
    add_port,
    get_signature_algorithm,
    remove_port,
)

__all__ = ["SETTINGS_HEADER", "SIGNATURE_HEADER", "public_request_url", "verify_signature"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


def public_request_url(public_url: str, path: str, query_string: str = "") -> str:
    """The URL Twilio called: configured ``public_url`` + ``path`` + raw query string."""
    url = public_url.rstrip("/") + "/" + path.lstrip("/")
    return f"{url}?{query_string}" if query_string else url


def _url_variants(url: str) -> list[str]:
    # Twilio signs with or without the default port depending on the product: accept both.
    parsed = urlparse(url)
    return list(dict.fromkeys([url, remove_port(parsed), add_port(parsed)]))


def verify_signature(
    token: str,
    url: str,
    params: Mapping[str, Any] | None,
    signature: str | None,
    *,
    raw_body: bytes | None = None,
    settings_header: str | None = None,
    shared_key: str | None = None,
) -> bool:
    """True if ``signature`` is Twilio's signature of this request.

    ``params`` are the form fields (a multidict is fine). For a JSON request pass
    ``raw_body`` and ``params=None``: the URL must carry ``bodySHA256``. With an
    ``X-Twilio-Webhooks-Signature-Settings: key=...,algorithm=...`` header (Webhook
    Rules) the signature is checked with ``shared_key`` and that algorithm instead.
    """
    if not token or not signature or not signature.isascii():
        return False  # undecodable header bytes arrive as lone surrogates: never a valid signature
    algorithm = get_signature_algorithm(settings_header).upper()
    if settings_header and "key=" in settings_header:
        # A Webhook Rule signed this request with its Setting's shared key (and algorithm).
        if not shared_key:
            log.warning("twilio webhook signed with a webhook-rule shared key; none configured")
            return False
        token = shared_key
    if algorithm not in (HMAC_SHA1, HMAC_SHA256):
        log.warning("twilio webhook signed with unsupported algorithm %s", algorithm[:32])
        return False
    validator = RequestValidator(token)
    if raw_body is not None and params is None:
        body_hash = parse_qs(urlsplit(url).query).get("bodySHA256", [""])[0]
        if not body_hash:
            return False
        if not hmac.compare_digest(hashlib.sha256(raw_body).hexdigest().encode(), body_hash.lower().encode()):
            return False
        params = {}
    given = signature.strip().encode()
    ok = False
    for candidate in _url_variants(url):
        computed = validator.compute_signature(candidate, params or {}, algorithm).encode()
        ok |= hmac.compare_digest(computed, given)  # no early exit: constant time over variants
    return ok
