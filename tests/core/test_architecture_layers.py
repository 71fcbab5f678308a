"""The import layers of claudemesh_gateway, checked over the source with ``ast`` (no import runs).

Layers, top to bottom; a module may import from its own layer and the layers below it, never
from a layer above (``TYPE_CHECKING`` and function-level imports count: a type is a dependency)::

    app        composition: app.py, cli.py, __main__.py, testing.py (its fixtures build the whole
               app), devbroker/ (a separate program the CLI and the fixtures start)
    runtime    the running gateway: runtime.py, meshes.py (its mesh peers), meshhandle.py
               (ctx.mesh()), settings.py, plugin_manager.py, ops.py, web/ (the /-/ endpoints)
    routing    what goes where: routing/ (route table, loop guard, commands, pipeline)
    delivery   how it gets there: delivery/ (outbox workers, render, split, files, send, record),
               trace.py (each message's journey) and otel.py (its optional OpenTelemetry spans)
    mesh|store the mesh client (mesh/, its key ring mesh/keys.py) and the durable store (store/);
               neither imports the other
    base       the gateway API (the package's __init__, gateway.py, messages.py, events.py,
               errors.py, hookspecs.py) and shared helpers (webhooks.py, files.py, retry_after.py,
               logconfig.py, confcheck.py, signals.py, tasks.py)

Besides the layers:

- no import cycle between modules (imports under ``if TYPE_CHECKING:`` aside, which never run);
- no private (``_underscore``) name is imported from another module, nor read off one as an
  attribute (``module._name``);
- the core never imports an in-tree plugin (``claudemesh_gateway.plugins.*``): it loads them by
  name, as it loads third-party ones;
- plugins (``plugins/*`` and ``examples/*``) import only the public API a third party may: the names
  in ``claudemesh_gateway.__all__`` and the ``__all__`` of the documented public modules
  (:data:`PUBLIC_MODULES`), plus their own package. Anything else of claudemesh_gateway is internal.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = "claudemesh_gateway"
PLUGINS = f"{PKG}.plugins"

#: (tier, {layer: module prefixes}), top first; layers of one tier may not import each other
LAYERS: tuple[tuple[str, dict[str, tuple[str, ...]]], ...] = (
    ("app", {"app": ("app", "cli", "__main__", "testing", "devbroker")}),
    ("runtime", {"runtime": ("runtime", "meshes", "meshhandle", "settings", "plugin_manager", "ops", "web")}),
    ("routing", {"routing": ("routing",)}),
    ("delivery", {"delivery": ("delivery", "trace", "otel")}),
    ("mesh|store", {"mesh": ("mesh",), "store": ("store",)}),
    ("base", {"base": ("", "gateway", "messages", "events", "errors", "hookspecs", "webhooks", "files",
                       "retry_after", "logconfig", "confcheck", "signals", "tasks")}),
)

#: modules a third-party plugin may import (their ``__all__``); the README's plugin author guide names them
PUBLIC_MODULES = (
    PKG,                            # the gateway API: Gateway, Message, Outbound, errors, events, hookimpl...
    f"{PKG}.testing",               # fakes, fixtures and the GatewayContract (tests)
    f"{PKG}.webhooks",              # reading untrusted requests
    f"{PKG}.files",                 # capped downloads (fetch_attachment)
    f"{PKG}.retry_after",           # the one Retry-After parser
    f"{PKG}.delivery.ratelimit",    # token buckets for a gateway's own polling (Slack history)
)


@dataclasses.dataclass(frozen=True)
class Edge:
    importer: str
    target: str  # a module of the package
    name: str | None  # the name imported from ``target`` (None: the module itself)
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``

    def where(self) -> str:
        return f"{self.importer}:{self.line}"


def source_modules(roots: dict[Path, str]) -> dict[str, Path]:
    """Module name -> file, for each source folder mapped to its package name."""
    out: dict[str, Path] = {}
    for folder, package in roots.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts)) if parts else package] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module, self.known = module, known
        self.package = module if is_package else module.rpartition(".")[0]
        self.edges: list[Edge] = []
        self.private_attrs: list[tuple[str, int]] = []
        self._aliases: dict[str, str] = {}  # local name -> module it is bound to
        self._type_only = False

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            before, self._type_only = self._type_only, True
            for child in node.body:
                self.visit(child)
            self._type_only = before
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, target: str, name: str | None, line: int) -> None:
        self.edges.append(Edge(self.module, target, name, line, self._type_only))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == PKG or alias.name.startswith(PKG + "."):
                self._add(alias.name, None, node.lineno)
                self._aliases[alias.asname or alias.name.partition(".")[0]] = (
                    alias.name if alias.asname else alias.name.partition(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        if not (source == PKG or source.startswith(PKG + ".")):
            return
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in self.known:
                self._add(sub, None, node.lineno)
                self._aliases[alias.asname or alias.name] = sub
            else:
                self._add(source, alias.name, node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self._aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            self.private_attrs.append((f"{self._aliases[node.value.id]}.{node.attr}", node.lineno))
        self.generic_visit(node)


def scan(modules: dict[str, Path]) -> tuple[list[Edge], list[tuple[str, str, int]]]:
    """Every import of a claudemesh_gateway module, and every ``module._private`` attribute read."""
    known = set(modules)
    edges: list[Edge] = []
    private_attrs: list[tuple[str, str, int]] = []
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges.extend(visitor.edges)
        private_attrs.extend((name, target, line) for target, line in visitor.private_attrs)
    return edges, private_attrs


def layer_of(module: str) -> tuple[int, str] | None:
    """(tier index, layer name) of a core module; None for plugins and unknown modules."""
    if module == PLUGINS or module.startswith(PLUGINS + "."):
        return None
    rel = module[len(PKG) + 1:] if module != PKG else ""
    best: tuple[int, int, str] | None = None
    for tier, (_, layers) in enumerate(LAYERS):
        for layer, prefixes in layers.items():
            for prefix in prefixes:
                matches = rel == prefix or (prefix and rel.startswith(prefix + "."))
                if matches and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), tier, layer)
    return (best[1], best[2]) if best is not None else None


def layer_problems(edges: list[Edge]) -> list[str]:
    problems: list[str] = []
    for e in edges:
        src, dst = layer_of(e.importer), layer_of(e.target)
        if src is None:
            continue
        if dst is None:
            if e.target.startswith(PLUGINS):
                problems.append(f"{e.where()}: the core imports the in-tree plugin module {e.target}")
            continue
        if dst[0] < src[0]:
            problems.append(f"{e.where()}: {e.importer} ({src[1]}) imports {e.target} from the layer above "
                            f"({dst[1]}){' under TYPE_CHECKING' if e.type_only else ''}")
        elif dst[0] == src[0] and dst[1] != src[1]:
            problems.append(f"{e.where()}: {e.importer} ({src[1]}) imports {e.target} ({dst[1]}), "
                            "a layer it must stay independent of")
    return list(dict.fromkeys(problems))  # one line per import statement


def private_problems(edges: list[Edge], private_attrs: list[tuple[str, str, int]]) -> list[str]:
    problems = [f"{e.where()}: imports the private name {e.name} from {e.target}" for e in edges
                if e.name and e.name.startswith("_") and not e.name.startswith("__") and e.target != e.importer]
    problems += [f"{importer}:{line}: reads the private attribute {target}" for importer, target, line in private_attrs]
    return problems


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Import cycles between modules (strongly connected components of more than one module),
    counting every import that can run: top-level and function-level, not ``TYPE_CHECKING``."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.type_only and e.target != e.importer:
            graph.setdefault(e.importer, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _package_parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def cycle_problems(edges: list[Edge]) -> list[str]:
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those edges are real too
    implied = [Edge(e.importer, parent, None, e.line, e.type_only) for e in edges
               for parent in _package_parents(e.target) if parent.startswith(PKG) and parent != e.importer
               and not e.importer.startswith(parent + ".")]
    return [" -> ".join(c) for c in cycles(edges + implied)]


def public_api() -> dict[str, set[str]]:
    """Each public module's ``__all__`` (read from its source)."""
    modules = source_modules({ROOT / "core": PKG})
    out = {}
    for module in PUBLIC_MODULES:
        tree = ast.parse(modules[module].read_text())
        names: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                names = set(ast.literal_eval(node.value))
        assert names, f"public module {module} has no __all__"
        out[module] = names
    return out


def plugin_problems(edges: list[Edge], own_package: dict[str, str]) -> list[str]:
    """``own_package``: plugin module -> the package it may import freely (its own)."""
    api = public_api()
    problems = []
    for e in edges:
        own = own_package.get(e.importer)
        if own is None:
            continue
        if e.target == own or e.target.startswith(own + "."):
            continue
        if e.target not in api:
            problems.append(f"{e.where()}: a plugin imports {e.target}, which is not public API")
        elif e.name is not None and e.name not in api[e.target]:
            problems.append(f"{e.where()}: a plugin imports {e.name} from {e.target}, not in its __all__")
    return problems


def core_and_plugins() -> dict[str, Path]:
    return source_modules({ROOT / "core": PKG, ROOT / "plugins": PLUGINS})


def plugin_packages(modules: dict[str, Path]) -> dict[str, str]:
    """In-tree plugin modules -> their plugin package; example distributions' modules -> theirs."""
    out = {m: ".".join(m.split(".")[:3]) for m in modules if m.startswith(PLUGINS + ".")}
    return out


def example_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for dist in sorted((ROOT / "examples").glob("*/pyproject.toml")) if (ROOT / "examples").is_dir() else ():
        for init in sorted(dist.parent.glob("*/__init__.py")):
            out.update(source_modules({init.parent: init.parent.name}))
    return out


# -- the tests ------------------------------------------------------------------------------------------------------------
def test_every_core_module_has_a_layer() -> None:
    missing = [m for m in core_and_plugins() if not m.startswith(PLUGINS) and layer_of(m) is None]
    assert not missing, f"give these modules a layer in LAYERS (and the docstring above): {missing}"


def test_no_module_imports_from_a_layer_above() -> None:
    edges, _ = scan(core_and_plugins())
    problems = layer_problems(edges)
    assert not problems, "\n".join(problems)


def test_no_private_names_cross_modules() -> None:
    modules = core_and_plugins() | example_modules()
    edges, attrs = scan(modules)
    problems = private_problems(edges, attrs)
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    edges, _ = scan(core_and_plugins())
    problems = cycle_problems(edges)
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_plugins_import_only_the_public_api() -> None:
    modules = core_and_plugins()
    own = plugin_packages(modules)
    examples = example_modules()
    own |= {m: m.split(".")[0] for m in examples}
    edges, _ = scan(modules | examples)
    problems = plugin_problems(edges, own)
    assert not problems, "\n".join(problems)


def test_public_modules_exist_and_declare_their_api() -> None:
    api = public_api()
    assert set(api) == set(PUBLIC_MODULES)
    assert "Gateway" in api[PKG] and "hookimpl" in api[PKG]


# -- the checks catch what they are for (a check that cannot fail is a defect) ----------------------------------------------
def _fake_tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / "core" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return source_modules({tmp_path / "core": PKG})


def test_the_checks_catch_an_upward_import_a_private_name_and_a_cycle(tmp_path: Path) -> None:
    """The shape of the cycle the core had (issue 14): meshhandle (runtime) lazily imported the private
    ``_start_mesh`` from app, routing's transport imported Runtime for its types, and app built the pipeline."""
    modules = _fake_tree(tmp_path, {
        "__init__.py": "",
        "app.py": "def build():\n    from .routing.pipeline import Pipeline\n\ndef _start_mesh():\n    pass\n",
        "runtime.py": "from .meshhandle import Handle\n",
        "meshhandle.py": "class Handle:\n    async def peer(self):\n        from .app import _start_mesh\n",
        "routing/__init__.py": "",
        "routing/pipeline.py": "from .transport import RoutingTransport\n",
        "routing/transport.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..runtime import Runtime\n"
                                "class RoutingTransport:\n    pass\n",
    })
    edges, attrs = scan(modules)
    layers = layer_problems(edges)
    assert layers == [
        f"{PKG}.meshhandle:3: {PKG}.meshhandle (runtime) imports {PKG}.app from the layer above (app)",
        (f"{PKG}.routing.transport:3: {PKG}.routing.transport (routing) imports {PKG}.runtime from the layer "
         "above (runtime) under TYPE_CHECKING"),
    ]
    assert private_problems(edges, attrs) == [
        "claudemesh_gateway.meshhandle:3: imports the private name _start_mesh from claudemesh_gateway.app"]
    # app -> routing.pipeline -> routing.transport -(TYPE_CHECKING)-> runtime -> meshhandle -> app: the lazy
    # import closes a cycle that runs (app -> runtime is not in this sketch); TYPE_CHECKING ones never run
    assert cycle_problems(edges) == []
    edges.append(Edge(f"{PKG}.app", f"{PKG}.runtime", "Runtime", 1, False))
    assert cycle_problems(edges) == [f"{PKG}.app -> {PKG}.meshhandle -> {PKG}.runtime"]


def test_the_checks_catch_a_package_init_cycle_and_a_private_attribute(tmp_path: Path) -> None:
    """``keys -> mesh -> peer -> keys``: importing ``keys`` first ran ``mesh/__init__``, which imported the
    peer, which imported ``keys`` half-initialised."""
    modules = _fake_tree(tmp_path, {
        "__init__.py": "",
        "keys.py": "from .mesh import crypto\n",
        "mesh/__init__.py": "from .peer import MeshPeer\n",
        "mesh/crypto.py": "",
        "mesh/peer.py": "from .. import keys\nkeys._ring\n",
    })
    edges, attrs = scan(modules)
    assert cycle_problems(edges) == ["claudemesh_gateway.keys -> claudemesh_gateway.mesh -> claudemesh_gateway.mesh.peer"]
    assert private_problems(edges, attrs) == [
        "claudemesh_gateway.mesh.peer:2: reads the private attribute claudemesh_gateway.keys._ring"]


def test_the_plugin_check_catches_an_internal_import() -> None:
    edges = [
        Edge(f"{PLUGINS}.x.gateway", f"{PKG}.routing.table", "RouteTable", 1, False),
        Edge(f"{PLUGINS}.x.gateway", PKG, "Gateway", 2, False),
        Edge(f"{PLUGINS}.x.gateway", PKG, "Runtime", 3, False),
        Edge(f"{PLUGINS}.x.gateway", f"{PLUGINS}.x.wire", "Update", 4, False),
        Edge(f"{PLUGINS}.x.gateway", f"{PLUGINS}.y.wire", "Update", 5, False),
    ]
    problems = plugin_problems(edges, {f"{PLUGINS}.x.gateway": f"{PLUGINS}.x"})
    assert [p.split(":")[1].split(" ")[0] for p in problems] == ["1", "3", "5"]


@pytest.mark.parametrize("module", ["claudemesh_gateway.mesh.keys", "claudemesh_gateway.mesh.peer",
                                    "claudemesh_gateway.routing.pipeline", "claudemesh_gateway.delivery",
                                    "claudemesh_gateway.meshhandle", "claudemesh_gateway.settings"])
def test_each_module_imports_first(module: str) -> None:
    """Each module imports in a fresh interpreter as the very first import (a cycle through a package's
    ``__init__`` fails only in that order)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", f"import {module}"], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
