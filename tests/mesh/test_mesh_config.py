"""[mesh.*] validation: one clear line per problem, secrets never echoed."""

from __future__ import annotations

import os
import secrets

import pytest
from claudemesh_gateway.mesh.config import MeshConfig, http_url_for
from claudemesh_gateway.mesh.crypto import KeyPair
from pydantic import ValidationError


def _base(**over):
    pair = KeyPair.generate()
    data = {
        "broker_url": "ws://127.0.0.1:7900/ws", "mesh_id": "M" * 32, "member_id": "mem1",
        "secret_key": pair.secret_hex, "root_key": secrets.token_urlsafe(32),
    }
    data.update(over)
    return data, pair


def _errors(data) -> list[str]:
    with pytest.raises(ValidationError) as ei:
        MeshConfig(**data)
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in ei.value.errors()]


def test_valid_config_and_derived_values():
    data, pair = _base(pubkey=None, groups=["ops", {"name": "dev", "role": "lead"}])
    cfg = MeshConfig(**data)
    assert cfg.member_pubkey == pair.public_hex
    assert [g.name for g in cfg.groups] == ["ops", "dev"]
    assert cfg.http_url == "http://127.0.0.1:7900"
    assert http_url_for("wss://ic.claudemesh.com/ws") == "https://ic.claudemesh.com"
    assert pair.secret_hex not in repr(cfg) and pair.secret_hex not in str(cfg)
    # a bare 64-hex seed works too
    cfg2 = MeshConfig(**{**data, "secret_key": pair.secret_hex[:64]})
    assert cfg2.member_pubkey == pair.public_hex


@pytest.mark.parametrize("url,needle", [
    ("http://h/ws", "ws:// or wss://"), ("wss://h/", "/ws"), ("wss://h/ws?x=1", "no query"),
    ("CHANGE_ME", "placeholder"),
])
def test_bad_broker_url(url, needle):
    data, _ = _base(broker_url=url)
    errs = _errors(data)
    assert len(errs) == 1 and errs[0].startswith("broker_url") and needle in errs[0]


def test_secret_key_problems_are_clear_and_not_echoed():
    data, pair = _base(secret_key="CHANGE_ME")
    errs = _errors(data)
    assert any("placeholder CHANGE_ME" in e and "keygen" in e for e in errs)
    bad = "ab" * 20
    data, _ = _base(secret_key=bad)
    errs = _errors(data)
    assert any("128 hex" in e for e in errs) and not any(bad in e for e in errs)
    # seed||pk with a wrong second half
    other = KeyPair.generate()
    data, _ = _base(secret_key=pair.secret_hex[:64] + other.public_hex)
    assert any("does not match" in e for e in _errors(data))


def test_pubkey_mismatch_and_missing_secret():
    data, _ = _base(pubkey=KeyPair.generate().public_hex)
    assert any("pubkey does not match" in e for e in _errors(data))
    data, _ = _base()
    del data["secret_key"]
    assert any("secret_key or secret_key_file is required" in e for e in _errors(data))
    data, _ = _base(pubkey="AB" * 32)
    assert any("lowercase hex" in e for e in _errors(data))


def test_root_key_format():
    data, _ = _base(root_key="short")
    assert any(e.startswith("root_key") and "43 characters" in e for e in _errors(data))
    data, _ = _base(root_key="CHANGE_ME")
    assert any("placeholder" in e for e in _errors(data))


def test_unknown_key_and_topic_settings():
    data, _ = _base(tokn="x")
    assert any(e.startswith("tokn") for e in _errors(data))
    data, _ = _base(topics={"ops": {"encryption": "plaintext"},
                            "sec": {"epoch": 2, "accept_epochs": [0, 1], "key_secret": secrets.token_urlsafe(32)}})
    cfg = MeshConfig(**data)
    assert cfg.topic_settings("ops").encryption == "plaintext"
    assert cfg.topic_settings("sec").accept_epochs == [1, 0]
    assert cfg.topic_settings("other").encryption == "auto"  # the default: v2 where sealed, else v1
    data, _ = _base(topics={"x": {"epoch": 1, "accept_epochs": [1]}})
    assert any("current epoch" in e for e in _errors(data))
    data, _ = _base(topics={"x": {"encryption": "aes"}})
    assert _errors(data)


def test_secret_key_file(tmp_path):
    pair = KeyPair.generate()
    path = tmp_path / "member.key"
    path.write_text(f"# claudemesh member key\n{pair.secret_hex}\n")
    os.chmod(path, 0o600)
    data, _ = _base(secret_key_file=str(path))
    del data["secret_key"]
    assert MeshConfig(**data).member_pubkey == pair.public_hex
    os.chmod(path, 0o644)
    errs = _errors(data)
    assert any("readable by group/others" in e and "chmod 600" in e for e in errs)
    assert not any(pair.secret_hex in e for e in errs)
    data2, _ = _base(secret_key_file=str(tmp_path / "missing.key"))
    del data2["secret_key"]
    assert any("does not exist" in e for e in _errors(data2))
    os.chmod(path, 0o600)
    data3, _ = _base(secret_key_file=str(path))
    assert any("not both" in e for e in _errors(data3))


def test_rest_configuration():
    data, _ = _base()
    assert MeshConfig(**data).rest_url is None                                   # self-hosted: not configured
    hosted, _ = _base(broker_url="wss://ic.claudemesh.com/ws")
    assert MeshConfig(**hosted).rest_url == "https://claudemesh.com"            # the hosted broker's web app
    assert MeshConfig(**{**hosted, "rest": {"enabled": False}}).rest_url is None
    cfg = MeshConfig(**{**data, "rest": {"url": "http://127.0.0.1:7900/api/v1/", "reseal_interval": 0.5}})
    assert cfg.rest_url == "http://127.0.0.1:7900" and cfg.rest.reseal_interval == 0.5
    assert cfg.rest.key_ttl == 300 and cfg.rest.key_retry_interval == 30
    assert any("rest.enabled = true needs rest.url" in e for e in _errors({**data, "rest": {"enabled": True}}))
    assert any(e.startswith("rest.url") for e in _errors({**data, "rest": {"url": "claudemesh.com"}}))
    assert any(e.startswith("rest.key_ttl") for e in _errors({**data, "rest": {"key_ttl": 1}}))
    assert any(e.startswith("default_encryption") for e in _errors({**data, "default_encryption": "v2"}))
