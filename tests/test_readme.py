"""The README's promises that code can check: the two commands, CI, and the plugin example."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.DOTALL)


def test_readme_opens_with_the_two_commands():
    first = _blocks(README, "sh")[0]
    assert README.index("```sh") < README.index("\n## ")  # before any section
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["bash scripts/run.sh", "bash scripts/test.sh"]
    for script in ("scripts/run.sh", "scripts/test.sh"):
        assert (ROOT / script).is_file()
    assert "config.example.toml" in (ROOT / "scripts/run.sh").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    assert "bash scripts/test.sh" in ci
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci


def test_plugin_example_is_the_one_the_suite_runs():
    """docs/app.md's echo plugin is executed verbatim by tests/core; the README shows the same code."""
    docs = (ROOT / "docs/app.md").read_text()

    def plugin(text: str) -> str:
        (block,) = [b for b in _blocks(text, "python") if b.startswith("# claudemesh_gateway_echo/__init__.py")]
        return block

    assert plugin(README) == plugin(docs)


def test_every_doc_the_readme_links_exists():
    for target in re.findall(r"\]\(((?:docs|deploy)/[^)#]+)", README):
        assert (ROOT / target).is_file(), target


def test_run_script_command_line_parses():
    """scripts/run.sh's exec line must be a command line the CLI accepts (it once put -c after 'run')."""
    import shlex

    from claudemesh_gateway.cli import build_parser

    (line,) = [ln for ln in (ROOT / "scripts/run.sh").read_text().splitlines() if ln.startswith("exec ")]
    argv = shlex.split(line.replace('"$@"', ""))[1:]  # drop "exec"
    assert argv[0].endswith("claudemesh-gateway")
    args = build_parser().parse_args(argv[1:])
    assert args.config in ("config.example.toml", ROOT / "config.example.toml") or str(args.config).endswith(
        "config.example.toml")
    assert (ROOT / "config.example.toml").is_file()
