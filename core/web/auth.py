"""Bearer JWT checks for the admin API (PyJWT): 401 unauthenticated/expired, 403 wrong audience."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import uuid
from typing import Any

import jwt
from aiohttp import web

from ..webhooks import MalformedHeader, header_value
from .config import AdminConfig

log = logging.getLogger(__name__)

__all__ = ["is_loopback", "mint_token", "verify_request"]

MAX_TOKEN_HEADER = 8192  # "Bearer <JWT>": a few hundred characters in practice


def _key_and_algorithms(cfg: AdminConfig) -> tuple[Any, list[str]]:
    if cfg.jwt_secret is not None:
        return cfg.jwt_secret.get_secret_value(), ["HS256"]
    key = cfg.public_key()  # loaded and checked with the configuration, never read per request
    if key is not None:
        return key, ["EdDSA"]
    raise web.HTTPUnauthorized(
        text=json.dumps({"error": "admin API disabled: set [admin] jwt_secret or jwt_public_key"}),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="claudemesh-gateway"'},
    )


def mint_token(cfg: AdminConfig, *, ttl_s: float, subject: str = "admin", private_key_pem: str | None = None) -> str:
    """A token for this gateway: HS256 with the configured secret, or EdDSA with ``private_key_pem``."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "aud": cfg.audience, "iat": now, "exp": now + int(ttl_s),
                              "jti": uuid.uuid4().hex}
    if cfg.issuer:
        claims["iss"] = cfg.issuer
    if cfg.jwt_secret is not None:
        return jwt.encode(claims, cfg.jwt_secret.get_secret_value(), algorithm="HS256")
    if private_key_pem is None:
        raise ValueError("EdDSA tokens need the private key (--private-key FILE); the gateway holds only the public key")
    return jwt.encode(claims, private_key_pem, algorithm="EdDSA")


def is_loopback(request: web.Request) -> bool:
    remote = request.remote or ""
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _unauthorized(reason: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=json.dumps({"error": reason}), content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="claudemesh-gateway", error="invalid_token"'},
    )


def verify_request(request: web.Request, cfg: AdminConfig) -> dict[str, Any]:
    """Return the token's claims or raise 401/403. Never echoes the token or key."""
    if not cfg.allow_remote and not is_loopback(request):
        raise web.HTTPForbidden(text=json.dumps({"error": "admin API answers loopback clients only"}),
                                content_type="application/json")
    try:
        header = header_value(request.headers, "Authorization", max_length=MAX_TOKEN_HEADER) or ""
    except MalformedHeader:
        raise _unauthorized("malformed Authorization header") from None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token")
    key, algorithms = _key_and_algorithms(cfg)
    try:
        claims = jwt.decode(
            token.strip(), key, algorithms=algorithms, audience=cfg.audience, issuer=cfg.issuer,
            leeway=cfg.leeway_s, options={"require": ["exp", "aud"]},
        )
    except jwt.InvalidAudienceError:
        raise web.HTTPForbidden(text=json.dumps({"error": "token audience is not this gateway"}),
                                content_type="application/json") from None
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise _unauthorized(f"token lacks required claim {exc.claim}") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("invalid token") from None
    return claims
