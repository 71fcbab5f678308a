"""Admin API: every endpoint with valid, missing, expired, wrong-audience and wrong-key tokens."""

from __future__ import annotations

import time

import jwt
import pytest
from aiohttp import web
from claudemesh_gateway.web import setup_web
from claudemesh_gateway.web.auth import mint_token
from claudemesh_gateway.web.config import AdminConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from web_fakes import AUD, SECRET, make_runtime


@pytest.fixture
async def admin_client(aiohttp_client):
    runtime = make_runtime({"jwt_secret": SECRET, "audience": AUD})
    app = web.Application()
    setup_web(app, runtime)
    client = await aiohttp_client(app)
    client.runtime = runtime
    return client


def token(**over):
    now = int(time.time())
    claims = {"sub": "ops@example", "aud": AUD, "iat": now, "exp": now + 300, **over}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, SECRET, algorithm="HS256")


ENDPOINTS = [
    ("GET", "/-/api/overview", None), ("GET", "/-/api/routes", None), ("GET", "/-/api/gateways", None),
    ("GET", "/-/api/queue", None), ("GET", "/-/api/dlq", None), ("POST", "/-/api/dlq/retry", {"ids": [7]}),
    ("POST", "/-/api/dlq/drop", {"ids": [7]}), ("GET", "/-/api/audit", None),
    ("POST", "/-/api/routes/r1/test", {"text": "hi"}), ("POST", "/-/api/reload", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(("case", "status"), [
    ("missing", 401), ("garbage", 401), ("expired", 401), ("no_exp", 401), ("wrong_key", 401),
    ("wrong_audience", 403),
])
async def test_every_endpoint_rejects_bad_tokens(admin_client, method, path, body, case, status):
    headers = {
        "missing": {},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "expired": {"Authorization": f"Bearer {token(exp=int(time.time()) - 3600)}"},
        "no_exp": {"Authorization": f"Bearer {token(exp=None)}"},
        "wrong_key": {"Authorization": "Bearer " + jwt.encode({"aud": AUD, "exp": int(time.time()) + 60},
                                                              "another-secret-another-secret-xx", algorithm="HS256")},
        "wrong_audience": {"Authorization": f"Bearer {token(aud='someone-else')}"},
    }[case]
    resp = await admin_client.request(method, path, json=body, headers=headers)
    assert resp.status == status
    text = await resp.text()
    assert SECRET not in text and "secret body" not in text
    assert resp.content_type == "application/json"
    assert admin_client.runtime.store.audits == []  # nothing happened
    assert 7 in admin_client.runtime.store.dead


async def test_valid_token_reads_and_acts(admin_client):
    h = {"Authorization": f"Bearer {token()}"}
    ov = await (await admin_client.get("/-/api/overview", headers=h)).json()
    assert ov["gateways"]["webhook"]["state"] == "connected"
    assert ov["queue"] == [{"lane": "webhook/sink", "depth": 2, "oldest_age_s": pytest.approx(5, abs=3)}]
    assert ov["dead_letters"][0]["reason"] == "HTTP 400 from sink"
    assert "secret body" not in str(ov)  # bodies are not exposed
    dlq = await (await admin_client.get("/-/api/dlq", headers=h)).json()
    assert dlq["count"] == 1 and dlq["dead_letters"][0]["id"] == 7
    resp = await admin_client.post("/-/api/dlq/retry", json={"ids": [7]}, headers=h)
    assert (await resp.json()) == {"action": "retry", "count": 1}
    assert admin_client.runtime.kicks == [1]
    audit = await (await admin_client.get("/-/api/audit", headers=h)).json()
    assert audit["audit"] == [{"actor": "ops@example", "action": "dlq.retry", "detail": {"ids": [7], "count": 1}}]


async def test_bad_bodies_are_400(admin_client):
    h = {"Authorization": f"Bearer {token()}"}
    resp = await admin_client.post("/-/api/dlq/retry", data=b"{nope", headers={**h, "Content-Type": "application/json"})
    assert resp.status == 400
    resp = await admin_client.post("/-/api/dlq/drop", json={"ids": ["7"]}, headers=h)
    assert resp.status == 400
    assert 7 in admin_client.runtime.store.dead


async def test_eddsa_public_key(aiohttp_client):
    priv = Ed25519PrivateKey.generate()
    pem_priv = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    pem_pub = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    runtime = make_runtime({"jwt_public_key": pem_pub})
    app = web.Application()
    setup_web(app, runtime)
    client = await aiohttp_client(app)
    cfg = AdminConfig(jwt_public_key=pem_pub)
    good = mint_token(cfg, ttl_s=60, private_key_pem=pem_priv)
    assert (await client.get("/-/api/routes", headers={"Authorization": f"Bearer {good}"})).status == 200
    hs = token()  # an HS256 token must not pass an EdDSA-configured gateway
    assert (await client.get("/-/api/routes", headers={"Authorization": f"Bearer {hs}"})).status == 401


async def test_admin_disabled_without_keys(aiohttp_client):
    runtime = make_runtime({})
    app = web.Application()
    setup_web(app, runtime)
    client = await aiohttp_client(app)
    resp = await client.get("/-/api/routes", headers={"Authorization": f"Bearer {token()}"})
    assert resp.status == 401
    assert "disabled" in (await resp.json())["error"]


def test_short_secret_rejected():
    with pytest.raises(ValueError, match="at least 32"):
        AdminConfig(jwt_secret="short")


async def test_remote_clients_refused_by_default(admin_client):
    from unittest.mock import patch

    with patch("claudemesh_gateway.web.auth.is_loopback", return_value=False):
        resp = await admin_client.get("/-/api/routes", headers={"Authorization": f"Bearer {token()}"})
    assert resp.status == 403
    assert "loopback" in (await resp.json())["error"]
