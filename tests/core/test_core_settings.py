"""Settings: TOML + includes + environment, one line per problem, placeholders refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from claudemesh_gateway.errors import ConfigError
from claudemesh_gateway.settings import iter_secrets, load_settings, settings_from_dict

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_and_paths_relative_to_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "etc" / "gw.toml", "[server]\nport = 9001\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    s = load_settings(cfg)
    assert s.server.port == 9001 and s.server.host == "127.0.0.1" and s.server.shutdown_timeout == 10
    assert s.server.state_dir == tmp_path / "etc" / "var"
    assert s.server.store == tmp_path / "etc" / "var" / "gateway.sqlite3"
    assert s.dev_broker.state_dir == tmp_path / "etc" / "var" / "devbroker"
    assert s.dev_broker.port == 7900 and s.dev_broker.embedded is False
    assert s.config_path == cfg.resolve()


def test_env_overrides_deep_merge_into_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.toml", """
[server]
port = 9000
[gateways.tg]
type = "telegram"
token = "from-file"
webhook_secret = "keep-me"
""")
    monkeypatch.setenv("CLAUDEMESH_GATEWAYS__TG__TOKEN", "from-env")
    monkeypatch.setenv("CLAUDEMESH_SERVER__HOST", "0.0.0.0")
    monkeypatch.setenv("CLAUDEMESH_TRACE_PLUGINS", "1")  # a switch, not a setting: ignored here
    s = load_settings(cfg)
    assert s.gateways["tg"] == {"type": "telegram", "token": "from-env", "webhook_secret": "keep-me"}
    assert s.server.host == "0.0.0.0" and s.server.port == 9000  # env merged, not replaced
    # explicit arguments win over the environment
    s2 = load_settings(cfg, server={"host": "127.0.0.2"})
    assert s2.server.host == "127.0.0.2"


def test_unknown_keys_one_line_each(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "bogus = 1\n[server]\nprt = 1\nport = 'x'\n[log]\nformat = 'xml'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    problems = info.value.problems
    assert "bogus: unknown key" in problems
    assert "server.prt: unknown key" in problems
    assert any(p.startswith("server.port: ") for p in problems)
    assert any(p.startswith("log.format: ") for p in problems)
    assert len(problems) == 4 and all("\n" not in p for p in problems)


def test_placeholders_refused_anywhere(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", """
[gateways.tg]
type = "telegram"
token = "123:CHANGE_ME"
[[routes]]
name = "r"
binds = [{ gateway = "tg", chat = "CHANGE_ME" }]
""")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert sorted(info.value.problems) == [
        "gateways.tg.token: placeholder value CHANGE_ME must be replaced",
        "routes[0].binds[0].chat: placeholder value CHANGE_ME must be replaced",
    ]
    assert load_settings(cfg, allow_placeholders=True).gateways["tg"]["token"] == "123:CHANGE_ME"


def test_placeholder_from_environment_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.toml", "[admin]\n")
    monkeypatch.setenv("CLAUDEMESH_ADMIN__JWT_SECRET", "CHANGE_ME" * 4)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert info.value.problems == ["admin.jwt_secret: placeholder value CHANGE_ME must be replaced"]


def test_includes_merge_under_the_main_file(tmp_path: Path) -> None:
    write(tmp_path / "var" / "extra.toml", "[server]\nport = 1\nhost = '127.0.0.9'\n[gateways.x]\na = 1\nb = 2\n")
    cfg = write(tmp_path / "c.toml", "include = ['var/extra.toml']\n[server]\nport = 2\n[gateways.x]\nb = 3\n")
    s = load_settings(cfg)
    assert s.server.port == 2 and s.server.host == "127.0.0.9"
    assert s.gateways["x"] == {"a": 1, "b": 3}


def test_missing_include(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "include = ['nope.toml', 'bad.toml']\n")
    write(tmp_path / "bad.toml", "this is = = not toml\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith("include[0]: file not found")
    assert info.value.problems[1].startswith("include[1]: not valid TOML")
    write(tmp_path / "bad.toml", "")
    assert load_settings(cfg, allow_missing_includes=True).include == ["nope.toml", "bad.toml"]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config: file not found"):
        load_settings(tmp_path / "absent.toml")


def test_secrets_found_for_redaction() -> None:
    s = settings_from_dict({
        "admin": {"jwt_secret": "s" * 40},
        "gateways": {"tg": {"type": "telegram", "token": "123:abc", "chat_title": "visible"}},
    })
    found = set(iter_secrets(s))
    assert {"s" * 40, "123:abc"} <= found
    assert "visible" not in found


def test_gateway_kind_defaults_to_table_name() -> None:
    s = settings_from_dict({"gateways": {"webhook": {}, "ops": {"type": "telegram", "token": "t"}}})
    assert s.gateway_kind("webhook") == "webhook"
    assert s.gateway_kind("ops") == "telegram"
    assert s.gateway_table("ops") == {"token": "t"}


def test_malformed_hex_and_key_mismatch_in_mesh_tables(tmp_path: Path) -> None:
    from claudemesh_gateway.mesh.crypto import KeyPair

    pair, other = KeyPair.generate(), KeyPair.generate()
    base = ('broker_url = "wss://broker.example/ws"\nmesh_id = "m1"\nmember_id = "u1"\n'
            'root_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"\n')
    cfg = write(tmp_path / "c.toml",
                f'[mesh.a]\n{base}secret_key = "zz-not-hex"\n'
                f'[mesh.b]\n{base}secret_key = "{pair.secret_hex}"\npubkey = "{other.public_hex}"\n'
                f'[mesh.c]\n{base}secret_key = "{pair.secret_hex}"\npubkey = "{pair.public_hex}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("mesh.a.secret_key: must be 128 hex chars")
    assert problems[1].startswith("mesh.b: pubkey does not match the public key of secret_key")
    assert all(pair.secret_hex not in p for p in problems)  # secrets never echoed
