"""Issue 17 item 11 (admin): ``[admin] leeway_s = nan`` / ``inf`` passed ``check`` and then let expired
tokens in; a ``jwt_public_key`` that is missing or not a PEM passed ``check`` and made every admin call a
500, because the key was read per request. Now: leeway is finite, >= 0 and bounded; the key is read and
checked with the configuration (``check``, startup, reload) and never again per request."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from claudemesh_gateway import cli
from claudemesh_gateway.web.auth import verify_request
from claudemesh_gateway.web.config import MAX_LEEWAY_S, AdminConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from pydantic import ValidationError

JWT_SECRET = "defect17-jwt-secret-must-not-leak-0123456789abcdef"
WEBHOOK = '[gateways.webhook]\nsecret = "defect17-webhook-secret-0123456789"\nurl = "http://127.0.0.1:9/s"\n'


def check(capsys: pytest.CaptureFixture[str], cfg: Path) -> tuple[int, list[str], str]:
    code = cli.main(["-c", str(cfg), "check"])
    _, err = capsys.readouterr()
    return code, err.splitlines(), err


def _ed25519() -> tuple[str, str]:
    priv = Ed25519PrivateKey.generate()
    return (priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode(),
            priv.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def _request(token: str) -> web.Request:
    req = make_mocked_request("GET", "/-/api/routes", headers={"Authorization": f"Bearer {token}"})
    req._transport_peername = ("127.0.0.1", 1)
    return req


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e9"])
def test_leeway_must_be_finite_non_negative_and_bounded(value: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'{WEBHOOK}[admin]\njwt_secret = "{JWT_SECRET}"\nleeway_s = {value}\n')
    code, lines, err = check(capsys, cfg)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("claudemesh-gateway: config error: admin.leeway_s: "), lines
    assert "Traceback" not in err and JWT_SECRET not in err


def test_nan_leeway_can_no_longer_let_an_expired_token_in() -> None:
    with pytest.raises(ValidationError, match="leeway_s"):
        AdminConfig(jwt_secret=JWT_SECRET, leeway_s=math.nan)
    cfg = AdminConfig(jwt_secret=JWT_SECRET, leeway_s=MAX_LEEWAY_S)
    expired = jwt.encode({"sub": "x", "aud": cfg.audience, "exp": int(time.time()) - 3600}, JWT_SECRET,
                         algorithm="HS256")
    with pytest.raises(web.HTTPUnauthorized):
        verify_request(_request(expired), cfg)


def test_missing_and_non_pem_public_keys_fail_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rsa_pub = generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "not.pem").write_text("this is not a key\n")
    (tmp_path / "rsa.pem").write_text(rsa_pub)
    os.mkfifo(tmp_path / "key.fifo")
    cases = {
        str(tmp_path / "missing.pem"): "does not exist",
        str(tmp_path / "not.pem"): "is not a PEM public key",
        str(tmp_path / "rsa.pem"): "is not an Ed25519 key",
        str(tmp_path / "key.fifo"): "is not a regular file",
        "-----BEGIN PUBLIC KEY-----\\nbm90IGEga2V5\\n-----END PUBLIC KEY-----": "is not a PEM public key",
        "~claudemesh-no-such-user-17/admin.pem": "no such user",
    }
    for value, expect in cases.items():
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'{WEBHOOK}[admin]\njwt_public_key = "{value}"\n')
        code, lines, err = check(capsys, cfg)
        assert code == 2 and len(lines) == 1, (value, lines)
        assert lines[0].startswith("claudemesh-gateway: config error: admin: jwt_public_key"), lines
        assert expect in lines[0], (value, lines)
        assert "Traceback" not in err and "this is not a key" not in err


def test_public_key_is_read_once_with_the_config_not_per_request(tmp_path: Path) -> None:
    priv_pem, pub_pem = _ed25519()
    key_file = tmp_path / "admin.pub.pem"
    key_file.write_text(pub_pem)
    cfg = AdminConfig(jwt_public_key=str(key_file))
    now = int(time.time())
    token = jwt.encode({"sub": "ops", "aud": cfg.audience, "iat": now, "exp": now + 60}, priv_pem,
                       algorithm="EdDSA")
    key_file.unlink()  # on main every request read the file again: FileNotFoundError, HTTP 500
    assert verify_request(_request(token), cfg)["sub"] == "ops"
    assert cfg.public_key_pem() == pub_pem.strip()
