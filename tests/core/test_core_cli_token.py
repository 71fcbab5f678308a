"""``claudemesh-gateway token``: a JWT the admin API accepts, or one clear line and exit 2."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from claudemesh_gateway import cli
from claudemesh_gateway.web.auth import verify_request
from claudemesh_gateway.web.config import AdminConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SECRET = "s" * 40
AUD = "gw-test-audience"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip(), err


def _accepted(token: str, cfg: AdminConfig) -> dict:
    request = make_mocked_request("GET", "/-/api/overview", headers={"Authorization": f"Bearer {token}"})
    return verify_request(request, cfg)


def test_hs256_token_is_accepted_with_ttl_and_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[admin]\njwt_secret = "{SECRET}"\naudience = "{AUD}"\nissuer = "me"\n')
    before = int(time.time())
    code, token, err = _run(capsys, "-c", str(cfg), "token", "--ttl", "30m", "--subject", "alice")
    assert code == 0, err
    assert "\n" not in token
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUD, issuer="me")
    assert claims["sub"] == "alice"
    assert before + 1800 <= claims["exp"] <= int(time.time()) + 1800
    admin = AdminConfig(jwt_secret=SECRET, audience=AUD, issuer="me", allow_remote=True)
    assert _accepted(token, admin)["sub"] == "alice"
    with pytest.raises(web.HTTPForbidden):  # another gateway's audience
        _accepted(token, AdminConfig(jwt_secret=SECRET, audience="other", allow_remote=True))


@pytest.mark.parametrize(("ttl", "seconds"), [("3600", 3600), ("1h", 3600), ("90s", 90), ("2d", 172800)])
def test_ttl_forms(tmp_path: Path, capsys: pytest.CaptureFixture[str], ttl: str, seconds: int) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[admin]\njwt_secret = "{SECRET}"\n')
    code, token, _ = _run(capsys, "-c", str(cfg), "token", "--ttl", ttl)
    assert code == 0
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="claudemesh-gateway")
    assert claims["exp"] - claims["iat"] == seconds
    assert claims["sub"] == "admin"


def test_eddsa_needs_the_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    priv = Ed25519PrivateKey.generate()
    pub_pem = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    key_file = tmp_path / "admin.pem"
    key_file.write_bytes(priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    (tmp_path / "admin.pub").write_text(pub_pem)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[admin]\njwt_public_key = """' + pub_pem + '"""\n')
    code, _, err = _run(capsys, "-c", str(cfg), "token")
    assert code == 2
    assert err.count("\n") == 1 and "--private-key" in err
    code, token, err = _run(capsys, "-c", str(cfg), "token", "--private-key", str(key_file), "--ttl", "60")
    assert code == 0, err
    claims = _accepted(token, AdminConfig(jwt_public_key=pub_pem, allow_remote=True))
    assert claims["exp"] - claims["iat"] == 60
    code, _, err = _run(capsys, "-c", str(cfg), "token", "--private-key", str(tmp_path / "missing.pem"))
    assert code == 2 and err.count("\n") == 1 and "missing.pem" in err


@pytest.mark.parametrize(("body", "argv", "needle"), [
    ("", (), "admin API is not configured"),
    (f'[admin]\njwt_secret = "{SECRET}"\n', ("--ttl", "soon"), "--ttl"),
    (f'[admin]\njwt_secret = "{SECRET}"\n', ("--ttl", "0"), "positive"),
    (f'[admin]\njwt_secret = "{SECRET}"\n', ("--private-key", "/nonexistent"), "HS256"),
])
def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str,
                                    argv: tuple[str, ...], needle: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    code, out, err = _run(capsys, "-c", str(cfg), "token", *argv)
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("claudemesh-gateway: config error: token: ")
    assert needle in lines[0]
    assert SECRET not in err
