"""Issue 17 item 13: ``claudemesh-gateway check -c FILE`` failed with ``unrecognized arguments``: the
global options (-c/--config, -v/--verbose, --traceback) were accepted only before the subcommand. They
are now accepted after every subcommand (and sub-subcommand) too, and the before-subcommand form still
works; given in both places, the one after the subcommand wins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from claudemesh_gateway import cli

CONFIG = '[gateways.webhook]\nsecret = "defect17-webhook-secret-0123456789"\nurl = "http://127.0.0.1:9/s"\n'


def _subcommands(parser) -> list[list[str]]:
    """Every (sub)command path of the real parser, e.g. ["dlq", "retry"]."""
    import argparse

    paths: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                deeper = _subcommands(sub)
                paths.extend([[name, *d] for d in deeper] if deeper else [[name]])
    return paths


@pytest.mark.parametrize("path", _subcommands(cli.build_parser()), ids=" ".join)
def test_every_subcommand_accepts_global_options_after_it(path: list[str]) -> None:
    parser = cli.build_parser()
    extra = {"enroll": ["invite"], "peers": ["m"], "send": ["m", "--topic", "t", "hi"], "tail": ["m", "--topic", "t"],
             "trace": ["mesh:dev:1"]}
    tail = extra.get(path[-1], [])
    args = parser.parse_args([*path, *tail, "-c", "after.toml", "-v", "--traceback"])
    assert (args.config, args.verbose, args.traceback) == ("after.toml", True, True)
    args = parser.parse_args(["-c", "before.toml", "-v", *path, *tail])
    assert (args.config, args.verbose, args.traceback) == ("before.toml", True, False)
    args = parser.parse_args([*path, *tail])
    assert (args.config, args.verbose, args.traceback) == (None, False, False)


def test_check_dash_c_after_the_subcommand_through_the_real_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG)
    for argv in (["check", "-c", str(cfg)], ["check", "--config", str(cfg)], ["-c", str(cfg), "check"],
                 ["check", f"--config={cfg}", "-v"], ["-c", str(tmp_path / "none.toml"), "check", "-c", str(cfg)]):
        proc = subprocess.run([sys.executable, "-m", "claudemesh_gateway", *argv], check=False,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert proc.stdout.startswith("ok: 0 mesh(es), 1 gateway(s)"), (argv, proc.stdout)
        assert "unrecognized arguments" not in proc.stderr


def test_config_error_after_the_subcommand_is_still_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("bogus = 1\n" + CONFIG)
    code = cli.main(["routes", "-c", str(cfg)])
    _, err = capsys.readouterr()
    assert (code, err.splitlines()) == (2, ["claudemesh-gateway: config error: bogus: unknown key"])
