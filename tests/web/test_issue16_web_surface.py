"""Issue 16, "Web surface": one test per rule, through the real app served as ``run`` serves it.

- the admin API refuses ``alg: none``, algorithm confusion, a missing ``exp``, a wrong (403) or
  missing (401) ``aud``, and tokens in query strings (which the access log masks too);
- the bearer header is the only credential: cookies are never read (so there is no CSRF);
- request size limits on every endpoint (announced or chunked);
- no state change on GET: GET and HEAD are read-only, state-changing endpoints answer only POST.

Headers and the Host check are in test_defect17_9_security_headers_and_host.py; item-by-item size
limits of each gateway's webhook in tests/<gateway>/test_defect17_6_7_*.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import jwt
import pytest
from claudemesh_gateway.app import create_app
from claudemesh_gateway.plugin_manager import make_plugin_manager
from claudemesh_gateway.plugins.webhook.signature import signature_headers
from claudemesh_gateway.settings import settings_from_dict
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

JWT_SECRET = "issue16-admin-jwt-secret-0123456789abcdef"
HOOK_SECRET = "issue16-webhook-secret-0123456789"
AUD = "claudemesh-gateway"
ED_KEY = Ed25519PrivateKey.generate()
ED_PRIVATE = ED_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
ED_PUBLIC = ED_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _settings(tmp_path, admin: dict[str, Any]):
    return settings_from_dict({
        "server": {"state_dir": str(tmp_path), "shutdown_timeout": 2.0},
        "dev_broker": {"embedded": True},
        "admin": admin,
        "gateways": {"hooks": {"type": "webhook", "secret": HOOK_SECRET}},
        "routes": [{"name": "r", "binds": [{"gateway": "hooks", "chat": "in", "direction": "in"},
                                           {"gateway": "hooks", "chat": "out", "direction": "out",
                                            "options": {"url": "http://127.0.0.1:9/unused"}}]}],
    })


@pytest.fixture
async def hs(tmp_path, raw_http):
    app = create_app(_settings(tmp_path, {"jwt_secret": JWT_SECRET}), make_plugin_manager(entry_points=False))
    async with raw_http.serve(app) as port:
        yield port, app


@pytest.fixture
async def ed(tmp_path, raw_http):
    app = create_app(_settings(tmp_path / "ed", {"jwt_public_key": ED_PUBLIC}), make_plugin_manager(entry_points=False))
    async with raw_http.serve(app) as port:
        yield port


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "ops", "aud": AUD, "iat": now, "exp": now + 300, **over}
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _hmac_token(key: bytes, claims: dict[str, Any], alg: str = "HS256") -> str:
    signing = _unsigned({"alg": alg, "typ": "JWT"}, claims)
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    return f"{signing}.{_b64(hmac.new(key, signing.encode(), digest).digest())}"


async def _get(raw_http, port: int, token: str | None, path: str = "/-/api/overview",
               extra: list[tuple[str, str]] = ()) -> tuple[int, str]:
    headers = [("Authorization", f"Bearer {token}")] if token else []
    status, _, body = await raw_http.request(port, "GET", path, [*headers, *extra])
    return status, body.decode()


async def test_issue16_valid_tokens_are_accepted(hs, ed, raw_http):
    assert (await _get(raw_http, hs[0], jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")))[0] == 200
    assert (await _get(raw_http, ed, jwt.encode(_claims(), ED_PRIVATE, algorithm="EdDSA")))[0] == 200


@pytest.mark.parametrize("signature", ["", "c2ln"])
async def test_issue16_alg_none_is_refused(hs, ed, raw_http, signature):
    token = _unsigned({"alg": "none", "typ": "JWT"}, _claims()) + "." + signature
    for port in (hs[0], ed):
        status, body = await _get(raw_http, port, token)
        assert status == 401, body


async def test_issue16_algorithm_confusion_is_refused(hs, ed, raw_http):
    # the EdDSA gateway's public key used as an HS256 secret: the classic confusion attack
    status, body = await _get(raw_http, ed, _hmac_token(ED_PUBLIC.encode(), _claims()))
    assert status == 401, body
    # the HS256 gateway: its own secret under another HMAC algorithm, and an EdDSA token
    assert (await _get(raw_http, hs[0], _hmac_token(JWT_SECRET.encode(), _claims(), "HS512")))[0] == 401
    assert (await _get(raw_http, hs[0], jwt.encode(_claims(), ED_PRIVATE, algorithm="EdDSA")))[0] == 401


async def test_issue16_missing_or_past_exp_is_refused(hs, raw_http):
    status, body = await _get(raw_http, hs[0], jwt.encode(_claims(exp=None), JWT_SECRET, algorithm="HS256"))
    assert status == 401 and "exp" in body
    status, _ = await _get(raw_http, hs[0], jwt.encode(_claims(exp=int(time.time()) - 3600), JWT_SECRET,
                                                        algorithm="HS256"))
    assert status == 401
    status, _ = await _get(raw_http, hs[0], jwt.encode(_claims(nbf=int(time.time()) + 3600), JWT_SECRET,
                                                        algorithm="HS256"))
    assert status == 401


async def test_issue16_wrong_audience_is_403_and_missing_audience_401(hs, raw_http):
    status, body = await _get(raw_http, hs[0], jwt.encode(_claims(aud="another-gateway"), JWT_SECRET,
                                                           algorithm="HS256"))
    assert status == 403 and "audience" in body
    status, body = await _get(raw_http, hs[0], jwt.encode(_claims(aud=None), JWT_SECRET, algorithm="HS256"))
    assert status == 401 and "aud" in body


@pytest.mark.parametrize("param", ["token", "access_token", "jwt", "Authorization"])
@pytest.mark.parametrize("path", ["/-/api/overview", "/-/"])
async def test_issue16_tokens_in_query_strings_are_refused_and_masked(hs, raw_http, caplog, param, path):
    caplog.set_level(logging.INFO)
    token = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    status, body = await _get(raw_http, hs[0], token, f"{path}?{param}={token}")
    assert status == 400 and "Authorization header" in body
    status, _ = await _get(raw_http, hs[0], None, f"{path}?{param}={token}")
    assert status == 400
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert access and all(token not in line for line in access), access
    assert any(f"{param}=***" in line for line in access)


async def test_issue16_cookies_are_not_credentials(hs, raw_http):
    token = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    for cookie in (f"token={token}", f"Authorization=Bearer {token}", f"claudemesh-gateway-token={token}"):
        status, _ = await _get(raw_http, hs[0], None, extra=[("Cookie", cookie)])
        assert status == 401, cookie
        status, _, _ = await raw_http.request(hs[0], "POST", "/-/api/dlq/drop", [("Cookie", cookie)], b"{}")
        assert status == 401, cookie
    _, headers, _ = await raw_http.request(hs[0], "GET", "/-/api/overview", [("Authorization", f"Bearer {token}")])
    assert "set-cookie" not in headers


BIG = 2 * 1024 * 1024


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/-/api/dlq/retry"), ("POST", "/-/api/dlq/drop"), ("POST", "/-/api/routes/r/test"),
    ("POST", "/-/api/reload"), ("GET", "/-/api/overview"), ("POST", "/-/dev/sink"), ("GET", "/-/dev/sink"),
    ("POST", "/gateways/hooks/in"),
])
async def test_issue16_announced_oversize_bodies_are_413_on_every_endpoint(hs, raw_http, method, path):
    token = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    body = b"{" + b" " * (BIG - 2) + b"}"
    headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
               *signature_headers(HOOK_SECRET, body).items()]
    status, _, answer = await raw_http.request(hs[0], method, path, headers, body)
    assert status == 413, (path, answer[:200])


@pytest.mark.parametrize(("path", "size"), [("/-/api/dlq/retry", 300 * 1024), ("/-/dev/sink", 1100 * 1024),
                                            ("/gateways/hooks/in", 1_100_000)])
async def test_issue16_chunked_oversize_bodies_are_413(hs, raw_http, path, size):
    token = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    payload = b'{"ids": [' + b"1," * (size // 2) + b"1]}"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 65536]), payload[i:i + 65536])
                       for i in range(0, len(payload), 65536)) + b"0\r\n\r\n"
    headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
               ("Transfer-Encoding", "chunked"), ("Content-Length", None),  # no length announced
               *signature_headers(HOOK_SECRET, payload).items()]
    status, _, answer = await raw_http.request(hs[0], "POST", path, headers, chunked)
    assert status == 413, (path, answer[:200])


async def test_issue16_no_state_change_on_get(hs, raw_http):
    port, app = hs
    from claudemesh_gateway.app import RUNTIME

    runtime = app[RUNTIME]
    token = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    auth = [("Authorization", f"Bearer {token}")]
    gets = sorted({r.resource.canonical for r in app.router.routes()
                   if r.method == "GET" and r.resource is not None})
    assert "/-/api/overview" in gets and "/-/dev/sink" in gets
    before = (await runtime.store.audit_list(100), await runtime.store.dlq_count())
    for path in gets:
        path = path.replace("{filename}", "dashboard.js")
        for method in ("GET", "HEAD"):
            status, _, _ = await raw_http.request(port, method, path, auth)
            assert status < 500, (method, path, status)
    # the endpoints that change state answer only POST
    for path in ("/-/api/dlq/retry", "/-/api/dlq/drop", "/-/api/routes/r/test", "/-/api/reload",
                 "/gateways/hooks/in"):
        for method in ("GET", "HEAD"):
            status, _, _ = await raw_http.request(port, method, path, auth)
            assert status == 405, (method, path, status)
    _, _, listing = await raw_http.request(port, "GET", "/-/dev/sink")
    assert json.loads(listing) == []
    assert (await runtime.store.audit_list(100), await runtime.store.dlq_count()) == before
