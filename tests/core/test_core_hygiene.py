"""Repository hygiene: packaging covers every package; nothing shadows claudemesh_gateway.plugins."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from claudemesh_gateway import hookspecs

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["tool"]["setuptools"]["packages"])


def test_every_package_is_packaged() -> None:
    on_disk = set()
    for top, name in (("core", "claudemesh_gateway"), ("plugins", "claudemesh_gateway.plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            on_disk.add(".".join((name, *rel)) if rel else name)
    missing = sorted(on_disk - _declared())
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_no_core_plugins_module() -> None:
    assert not (ROOT / "core" / "plugins.py").exists(), "core/plugins.py would shadow claudemesh_gateway.plugins"


def test_no_tests_init() -> None:
    assert not list((ROOT / "tests").rglob("__init__.py")), "tests/ must not be a package (import-mode=importlib)"


def test_every_hookspec_has_a_test_and_a_docstring() -> None:
    specs = [n for n, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, "claudemesh_gateway_spec")]
    assert specs, "no hookspecs found"
    tree = ast.parse((Path(__file__).parent / "test_core_hooks.py").read_text())
    tests = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for spec in specs:
        assert f"test_hook_{spec}" in tests, f"tests/core/test_core_hooks.py lacks test_hook_{spec}"
        assert (getattr(hookspecs, spec).__doc__ or "").strip(), f"hookspec {spec} has no docstring"


def test_every_hookspec_is_documented_for_plugin_authors() -> None:
    doc = (ROOT / "docs" / "app.md").read_text()
    for name, obj in vars(hookspecs).items():
        if callable(obj) and hasattr(obj, "claudemesh_gateway_spec"):
            assert f"def {name}(" in doc, f"docs/app.md does not show the signature of {name}"
