"""Found by the config fuzzing of issue 16: a key name with a newline or CR (in TOML or in a JSON
environment override) was copied raw into its problem line, so one config problem printed as two
stderr lines (and could forge a line). Control characters in a location are now written as escapes,
and the CLI escapes every line it prints as a last line of defence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from claudemesh_gateway import ConfigError, cli
from claudemesh_gateway.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("CLAUDEMESH_")]:
        monkeypatch.delenv(name)


def _check(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = cli.main(["-c", str(cfg), "check"])
    return code, capsys.readouterr().err.splitlines()


def test_env_override_key_with_cr_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    monkeypatch.setenv("CLAUDEMESH_MESH", '{"\\r": false}')  # the fuzzer's case
    code, lines = _check(cfg, capsys)
    assert code == 2
    expected = r"claudemesh-gateway: config error: mesh.\r: Input should be a valid dictionary or instance of MeshConfig"
    assert lines == [expected]


def test_toml_key_with_newline_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('"x\\nclaudemesh-gateway: forged" = 1\n[server]\n"\\u2028" = 2\n')
    code, lines = _check(cfg, capsys)
    assert code == 2
    assert sorted(lines) == sorted([
        r"claudemesh-gateway: config error: x\nclaudemesh-gateway: forged: unknown key",
        r"claudemesh-gateway: config error: server.\u2028: unknown key",
    ])


def test_loader_problems_themselves_are_single_lines(tmp_path: Path) -> None:
    """What reload returns and logs is ConfigError.problems, not the CLI's lines: each is one line too
    (the fuzzer's second case: a placeholder under a key with a newline)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\n"\\n" = "CHANGE_ME"\n[gateways."a\\nb"]\ntype = "webhook"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    problems = info.value.problems
    assert problems and all("\n" not in p and "\r" not in p for p in problems), problems
    assert r"server.\n: unknown key" in problems
    assert any(p.startswith("gateways: 'a\\nb': gateway instance names may not") for p in problems), problems
