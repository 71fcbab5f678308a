"""The complete third-party plugin example in docs/app.md, run verbatim: the plugin module, its
contract tests (collected from the doc's test block) and its entry point."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import ClassVar

import pytest
from claudemesh_gateway.plugin_manager import gateway_kinds, make_plugin_manager, plugin_info

DOC = (Path(__file__).resolve().parents[2] / "docs" / "app.md").read_text()


def _block(lang: str, first_line: str) -> str:
    for match in re.finditer(rf"```{lang}\n(.*?)```", DOC, re.DOTALL):
        if match.group(1).startswith(first_line):
            return match.group(1)
    raise AssertionError(f"docs/app.md has no {lang} block starting with {first_line!r}")


_pkg_root = Path(tempfile.mkdtemp(prefix="cmgw-doc-plugin-"))
(_pkg_root / "claudemesh_gateway_echo").mkdir()
(_pkg_root / "claudemesh_gateway_echo" / "__init__.py").write_text(
    _block("python", "# claudemesh_gateway_echo/__init__.py"))
sys.path.insert(0, str(_pkg_root))
importlib.invalidate_caches()

# the doc's test module, verbatim: defines TestEcho(GatewayContract), collected from here
_TEST_MODULE = _block("python", "# tests/test_echo.py")
exec(compile(_TEST_MODULE, "docs/app.md:tests/test_echo.py", "exec"), globals())  # noqa: S102 - the doc is the test


def test_doc_entry_point_registers_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    project = tomllib.loads(_block("toml", "# pyproject.toml"))["project"]
    [(ep_name, target)] = project["entry-points"]["claudemesh_gateway"].items()

    class EP:
        group, name = "claudemesh_gateway", ep_name

        def load(self) -> object:
            return importlib.import_module(target)

    class Dist:
        metadata: ClassVar[dict[str, str]] = {"Name": project["name"]}
        version = project["version"]
        entry_points = (EP(),)

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter([Dist()]))
    pm = make_plugin_manager(builtins=False)
    assert gateway_kinds(pm)["echo"].__module__ == "claudemesh_gateway_echo"
    assert plugin_info(pm)[0] | {"hooks": None} == {
        "name": "echo", "version": "0.1.0", "distribution": "claudemesh-gateway-echo", "builtin": False,
        "hooks": None}


def test_doc_operator_tables_validate() -> None:
    from claudemesh_gateway.app import validate_gateways
    from claudemesh_gateway.settings import settings_from_dict

    tables = tomllib.loads(_block("toml", "[gateways.echo]"))
    pm = make_plugin_manager(entry_points=False, builtins=False,
                             plugins=[("echo", importlib.import_module("claudemesh_gateway_echo"))])
    settings = settings_from_dict({"gateways": tables["gateways"]})
    [(cls, cfg)] = validate_gateways(settings, gateway_kinds(pm)).values()
    assert cls.kind == "echo" and cfg.sink_url == "https://example.org/hook"
