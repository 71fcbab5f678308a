"""Issue 17 item 10: every config problem that used to escape the loader as exit 1 (an unexpected
error) is one ``config error`` line and exit 2, through the real CLI: 5,000-deep TOML, malformed JSON
in ``CLAUDEMESH_*`` overrides, a NUL in a path, a non-UTF-8 file, ``~nosuchuser/...`` in a path,
and a FIFO where a key file or an include should be (which made ``check`` hang for ever)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from claudemesh_gateway import cli
from claudemesh_gateway.mesh.crypto import KeyPair

NO_USER = "~claudemesh-no-such-user-17"
WEBHOOK_SECRET = "defect17-webhook-secret-must-not-leak-0123456789"
JWT_SECRET = "defect17-jwt-secret-must-not-leak-0123456789abcdef"
PAIR = KeyPair.generate()
BASE = (
    f'[gateways.webhook]\nsecret = "{WEBHOOK_SECRET}"\nurl = "http://127.0.0.1:9/sink"\n'
    f'[admin]\njwt_secret = "{JWT_SECRET}"\n'
)
SECRETS = (WEBHOOK_SECRET, JWT_SECRET, PAIR.secret_hex, PAIR.secret_hex[:64])


def mesh_table(key_line: str) -> str:
    return ('[mesh.m]\nbroker_url = "ws://127.0.0.1:9/ws"\nmesh_id = "m1"\nmember_id = "u1"\n'
            f'root_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"\n{key_line}\n')


@dataclass
class Case:
    name: str
    toml: str  # the main config file ({dir} is the config's directory)
    expect: str  # a fragment the one error line must contain
    env: dict[str, str] = field(default_factory=dict)
    files: Callable[[Path], None] | None = None  # extra files next to the config


def _non_utf8(d: Path) -> None:
    (d / "inc.toml").write_bytes(b'[server]\nhost = "\xff\xfe"\n')


def _fifo_key(d: Path) -> None:
    os.mkfifo(d / "key.fifo", 0o600)


def _fifo_include(d: Path) -> None:
    os.mkfifo(d / "inc.fifo", 0o600)


CASES = [
    Case("deep_toml", BASE + "deep = " + "[" * 5000 + "]" * 5000 + "\n", "nest more than 32 levels deep"),
    Case("deep_include", 'include = ["inc.toml"]\n' + BASE, "include[0]: tables and lists nest more than",
         files=lambda d: (d / "inc.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")),
    Case("env_routes_json", BASE, "CLAUDEMESH_ROUTES: not valid JSON",
         env={"CLAUDEMESH_ROUTES": '[{"name": "r", '}),
    Case("env_mesh_json", BASE, "CLAUDEMESH_MESH: not valid JSON",
         env={"CLAUDEMESH_MESH": '{"m": {"secret_key": "' + PAIR.secret_hex + '"'}),
    Case("env_delivery_json", BASE, "CLAUDEMESH_DELIVERY: not valid JSON",
         env={"CLAUDEMESH_DELIVERY": "{max_attempts: 3}"}),
    Case("env_plugins_disable_json", BASE, "CLAUDEMESH_PLUGINS__DISABLE: not valid JSON",
         env={"CLAUDEMESH_PLUGINS__DISABLE": "whatsapp,slack"}),
    Case("env_deep_json", BASE, "CLAUDEMESH_DELIVERY: nests more than 32 levels deep",
         env={"CLAUDEMESH_DELIVERY": '{"default_limits": ' + "[" * 5000 + "]" * 5000 + "}"}),
    Case("nul_state_dir", '[server]\nstate_dir = "var\\u0000x"\n' + BASE,
         "server.state_dir: must not contain a NUL character"),
    Case("nul_store_path", '[server]\nstore_path = "var/s\\u0000.sqlite3"\n' + BASE,
         "server.store_path: must not contain a NUL character"),
    Case("nul_dev_broker_state_dir", '[dev_broker]\nstate_dir = "\\u0000"\n' + BASE,
         "dev_broker.state_dir: must not contain a NUL character"),
    Case("nul_include", 'include = ["inc\\u0000.toml"]\n' + BASE, "include[0]: must not contain a NUL character"),
    Case("nul_secret_key_file", BASE + mesh_table('secret_key_file = "key\\u0000"'),
         "mesh.m.secret_key_file: must not contain a NUL character"),
    Case("non_utf8_include", 'include = ["inc.toml"]\n' + BASE, "include[0]: not UTF-8 text", files=_non_utf8),
    Case("tilde_user_include", f'include = ["{NO_USER}/inc.toml"]\n' + BASE,
         f"include[0]: cannot expand '{NO_USER}': no such user"),
    Case("tilde_user_state_dir", f'[server]\nstate_dir = "{NO_USER}/var"\n' + BASE,
         f"server.state_dir: cannot expand '{NO_USER}': no such user"),
    Case("tilde_user_secret_key_file", BASE + mesh_table(f'secret_key_file = "{NO_USER}/key"'),
         f"mesh.m.secret_key_file: cannot expand '{NO_USER}': no such user"),
    Case("fifo_secret_key_file", BASE + mesh_table('secret_key_file = "{dir}/key.fifo"'),
         "key.fifo is not a regular file", files=_fifo_key),
    Case("fifo_include", 'include = ["inc.fifo"]\n' + BASE, "include[0]: file ", files=_fifo_include),
]


def _write(tmp_path: Path, case: Case) -> Path:
    if case.files is not None:
        case.files(tmp_path)
    cfg = tmp_path / "config.toml"
    cfg.write_text(case.toml.replace("{dir}", str(tmp_path)))
    return cfg


def _assert_one_clean_line(code: int, err: str, case: Case) -> None:
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("claudemesh-gateway: config error: "), lines
    assert case.expect in lines[0], lines
    assert "Traceback" not in err and "unexpected error" not in err
    for secret in SECRETS:
        assert secret not in err


@pytest.mark.parametrize("case", [c for c in CASES if not c.name.startswith("fifo")], ids=lambda c: c.name)
def test_config_problem_is_one_line_exit_2(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in os.environ if n.upper().startswith("CLAUDEMESH_")]:
        monkeypatch.delenv(name)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    cfg = _write(tmp_path, case)
    code = cli.main(["-c", str(cfg), "check"])
    out, err = capsys.readouterr()
    _assert_one_clean_line(code, err, case)
    assert out == ""


@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith("fifo")], ids=lambda c: c.name)
def test_fifo_is_refused_instead_of_hanging(case: Case, tmp_path: Path) -> None:
    """In a subprocess: on main, ``check`` blocked for ever opening the FIFO (the timeout fails the test)."""
    cfg = _write(tmp_path, case)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CLAUDEMESH_")}
    proc = subprocess.run([sys.executable, "-m", "claudemesh_gateway", "-c", str(cfg), "check"],
                          check=False, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    _assert_one_clean_line(proc.returncode, proc.stderr, case)


def test_tilde_user_config_path_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["-c", f"{NO_USER}/config.toml", "check"])
    _, err = capsys.readouterr()
    expected = f"claudemesh-gateway: config error: config: cannot expand '{NO_USER}': no such user"
    assert (code, err.splitlines()) == (2, [expected])


def test_token_private_key_fifo_is_refused_instead_of_hanging(tmp_path: Path) -> None:
    """The same hang in ``token --private-key FIFO`` (the key was read with read_text)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    cfg = tmp_path / "config.toml"
    cfg.write_text('[admin]\njwt_public_key = """' + pub + '"""\n')
    os.mkfifo(tmp_path / "key.fifo", 0o600)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CLAUDEMESH_")}
    proc = subprocess.run([sys.executable, "-m", "claudemesh_gateway", "-c", str(cfg), "token", "--private-key",
                           str(tmp_path / "key.fifo")], check=False, capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    expected = f"claudemesh-gateway: config error: token: --private-key: file {tmp_path / 'key.fifo'} is not a regular file"
    assert proc.stderr.splitlines() == [expected]
