"""Issue 16 (fuzzing, config part): mutations of ``config.example.toml`` and of ``CLAUDEMESH_*``
environment overrides never make the loader raise anything but a clean config error.

Invariant, for every mutated configuration:

- ``load_settings`` + gateway validation + route checks return valid Settings or raise
  ``ConfigError`` (one ``path: message`` line per problem), never another exception; a valid
  Settings holds no NaN;
- ``claudemesh-gateway -c FILE check`` exits 0 (``ok: ...``) or 2 with only
  ``claudemesh-gateway: config error: ...`` lines on stderr: no traceback, no exit 1.

The default run is short (a fixed, derandomised set of examples: a few seconds). Set
``CLAUDEMESH_FUZZ_EXAMPLES=N`` for N random examples per property (e.g. 2000 for a long run).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway import ConfigError, cli
from claudemesh_gateway.app import route_problems, validate_gateways
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.plugin_manager import gateway_kinds, make_plugin_manager
from claudemesh_gateway.settings import load_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "config.example.toml").read_text()
#: the example with its commented-out ``#:`` tables switched on (Telegram, Slack, WhatsApp, bridge, routes)
#: (placeholders filled in, so that mutations reach every gateway kind's own validation)
EXAMPLE_ALL = re.sub(r"^#: ?", "", EXAMPLE, flags=re.MULTILINE).replace("CHANGE_ME", "fuzz0123456789abcdefghij")

_LONG = os.environ.get("CLAUDEMESH_FUZZ_EXAMPLES", "").strip()
FUZZ = settings(
    max_examples=int(_LONG) if _LONG.isdigit() else 40,
    derandomize=not _LONG.isdigit(),  # the default run is the same every time
    deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

PAIR = KeyPair.generate()
MESHES = {
    "mesh": {
        "dev": {"broker_url": "ws://127.0.0.1:7900/ws", "mesh_id": "devmesh0000000000000000000000000",
                "member_id": "gw1", "secret_key": PAIR.secret_hex, "pubkey": PAIR.public_hex,
                "root_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "topics": {"general": {"epoch": 0}}},
    },
}

SPECIAL_STRINGS = [
    "", " ", "CHANGE_ME", "\x00", "a\x00b", "~", "~claudemesh-no-such-user-16/x", "~/x", "/dev/zero", "/dev/null",
    "/proc/self/mem", "/", "..", "var", "{text:>300000000}", "{text}", "{sender}: {text}", "{", "}", "{0}",
    "{text:{sender}}", "{gateway}:chat:{chat}", "nan", "inf", "1e999", "-1", "0", "9" * 5000, "http://",
    "https://example.org", "ws://127.0.0.1:1/ws", "wss://x/ws?q", "whatsapp:+15550000000", "DEBUG", "json",
    "both", "in", "out", "hkdf", "plaintext", "webhook", "mesh", "dev:#general", "dev:tag:x", "dev:@alice",
    "telegram", "slack", "whatsapp", "bridge", "memory", "\u202e", "é" * 3, "\n", "\\", '"', "-----BEGIN PUBLIC KEY-----",
    PAIR.secret_hex, PAIR.public_hex, "A" * 43, "x" * 300,
]
KNOWN_KEYS = [
    "server", "dev_broker", "include", "mesh", "plugins", "gateways", "routes", "delivery", "log", "admin", "health",
    "host", "port", "public_url", "state_dir", "store_path", "embedded", "level", "format", "disable", "type",
    "secret", "url", "name", "topic", "tags", "direction", "attribution", "binds", "gateway", "chat", "thread",
    "options", "allow", "deny", "jwt_secret", "jwt_public_key", "leeway_s", "audience", "default_limits", "scope",
    "per_second", "burst", "secret_key_file", "secret_key", "broker_url", "backoff", "max_attempts", "token",
    "mode", "encryption", "max_hops", "stall_after_s", "epoch", "accept_epochs", "key_secret", "prefetch",
]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, -(2**63) - 1, 65536, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1.5]),
    st.text(max_size=12),
    st.sampled_from(SPECIAL_STRINGS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=6)), inner, max_size=3),
    ),
    max_leaves=6,
)
deep = st.integers(min_value=30, max_value=60).map(lambda n: json.loads("[" * n + "]" * n))


# -- a small TOML writer (every table as an inline table: one line per top-level key) ------------------------
def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(to_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(str(k))} = {to_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{_toml_str(str(k))} = {to_toml_value(v)}\n" for k, v in data.items())


# -- mutations ------------------------------------------------------------------------------------------------
def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated_config(draw: st.DrawFn) -> tuple[str | bytes, dict[str, str]]:
    base_text = draw(st.sampled_from([EXAMPLE, EXAMPLE_ALL]))
    data: dict[str, Any] = tomllib.loads(base_text)
    if draw(st.booleans()):  # the mesh tables the embedded dev broker would write, inlined
        data.pop("include", None)
        data["mesh"] = json.loads(json.dumps(MESHES["mesh"]))
        data["dev_broker"] = {**data.get("dev_broker", {}), "embedded": False}
    if draw(st.booleans()):  # tables the example leaves at their defaults
        data["admin"] = {"jwt_secret": "fuzz-admin-secret-0123456789abcdefghij", "leeway_s": 5.0}
        data["health"] = {"stall_after_s": 60.0, "poll_stall_after_s": 60.0}
        data["delivery"] = {"max_attempts": 12, "default_limits": {"webhook": [{"scope": "{gateway}:{chat}",
                                                                                 "per_second": 1.0}]}}
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 2, 3, 6]))):  # mostly one: more of them reach deep checks
        paths = [p for p in _paths(data) if p]
        op = draw(st.sampled_from(["set", "set", "set", "delete", "add", "add", "number", "number", "deep"]))
        numbers = [p for p in paths if isinstance(_parent(data, (*p, None)), (int, float))]
        if op == "number" and numbers:  # a numeric setting gets a special float or an extreme integer
            path = draw(st.sampled_from(numbers))
            _parent(data, path)[path[-1]] = draw(st.sampled_from(
                [math.nan, math.inf, -math.inf, -0.0, -1, 0, 1e308, 2**63, 10**30, -(2**63) - 1]))
        elif op in ("set", "deep", "delete") and paths:
            path = draw(st.sampled_from(paths))
            parent = _parent(data, path)
            if op == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(deep if op == "deep" else values)
        else:
            tables = [p for p in _paths(data) if isinstance(_parent(data, (*p, None)), dict)]
            where = _parent(data, (*draw(st.sampled_from(tables)), None))
            where[draw(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=6)))] = draw(values)
    text: str | bytes = to_toml(data)
    if draw(st.integers(min_value=0, max_value=7)) == 0:  # and now and then a raw text/byte edit
        raw = text.encode("utf-8")
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        cut = draw(st.integers(min_value=0, max_value=8))
        insert = draw(st.one_of(st.binary(max_size=6), st.sampled_from([b"[", b"]", b"{", b"=", b'"', b"\n[x]\n",
                                                                        b"\xff", b"\x00", b"\n"])))
        text = raw[:at] + insert + raw[at + cut:]
    env = draw(st.dictionaries(
        st.sampled_from(["CLAUDEMESH_ROUTES", "CLAUDEMESH_MESH", "CLAUDEMESH_DELIVERY", "CLAUDEMESH_PLUGINS__DISABLE",
                         "CLAUDEMESH_SERVER__PORT", "CLAUDEMESH_SERVER", "CLAUDEMESH_GATEWAYS__WEBHOOK__SECRET",
                         "CLAUDEMESH_GATEWAYS__WEBHOOK", "CLAUDEMESH_LOG__LEVEL", "CLAUDEMESH_ADMIN__LEEWAY_S",
                         "CLAUDEMESH_INCLUDE", "CLAUDEMESH_DEV_BROKER__STATE_DIR", "CLAUDEMESH_HEALTH"]),
        st.one_of(st.sampled_from(SPECIAL_STRINGS), st.text(max_size=10),
                  values.map(lambda v: json.dumps(v, allow_nan=True))),
        max_size=2,
    ))
    return text, env


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("CLAUDEMESH_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v.replace("\x00", "") for k, v in env.items()})  # the OS refuses NUL in the environment
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.upper().startswith("CLAUDEMESH_")]:
            del os.environ[k]
        os.environ.update(saved)


def _write(tmp: Path, text: str | bytes) -> Path:
    cfg = tmp / "config.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return cfg


def _floats(value: Any) -> Iterator[float]:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _floats(getattr(value, name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _floats(v)
    elif isinstance(value, float):
        yield value


@pytest.fixture(scope="module")
def kinds() -> dict[str, Any]:
    return gateway_kinds(make_plugin_manager())


@FUZZ
@given(case=mutated_config())
def test_loader_gives_settings_or_a_config_error(case: tuple[str | bytes, dict[str, str]], tmp_path: Path,
                                                 kinds: dict[str, Any]) -> None:
    text, env = case
    cfg = _write(tmp_path, text)
    with environment(env):
        try:
            s = load_settings(cfg, allow_missing_includes=True)
            configs = validate_gateways(s, kinds)
            problems = route_problems(s, {name: cls for name, (cls, _) in configs.items()}, skip_meshes=True)
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and p.strip() and "\n" not in p for p in exc.problems)
            return
    assert all(isinstance(p, str) for p in problems)
    assert not any(math.isnan(f) for f in _floats(s)), "a valid configuration holds a NaN"


@FUZZ
@given(case=mutated_config())
def test_check_exits_0_or_2_with_config_error_lines_only(case: tuple[str | bytes, dict[str, str]],
                                                         tmp_path: Path) -> None:
    text, env = case
    cfg = _write(tmp_path, text)
    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["-c", str(cfg), "check"])
    lines = err.getvalue().splitlines()
    assert code in (0, 2), (code, err.getvalue()[-2000:])
    assert "Traceback" not in err.getvalue()
    if code == 0:
        assert out.getvalue().startswith("ok: "), out.getvalue()
        assert all(ln.startswith(("note: ", "warning: ")) for ln in lines), lines
    else:
        errors = [ln for ln in lines if not ln.startswith("note: ")]  # check's note on a pending dev broker
        assert errors and all(ln.startswith("claudemesh-gateway: config error: ") for ln in errors), lines


def _full_example() -> dict[str, Any]:
    """The example with every table switched on and every numeric default of the core's models written
    out, so a sweep reaches each numeric setting."""
    from claudemesh_gateway.delivery.config import DeliveryConfig
    from claudemesh_gateway.mesh.config import MeshConfig

    data = tomllib.loads(EXAMPLE_ALL)
    data.pop("include")
    data["dev_broker"]["embedded"] = False
    data["mesh"] = {"dev": copy.deepcopy(MESHES["mesh"]["dev"]), "partner": copy.deepcopy(MESHES["mesh"]["dev"])}
    for name, f in MeshConfig.model_fields.items():
        if f.annotation in (int, float):
            data["mesh"]["dev"].setdefault(name, f.default)
    data["delivery"] = {k: v for k, v in DeliveryConfig().model_dump().items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
    data["admin"] = {"jwt_secret": "fuzz-admin-secret-0123456789abcdefghij", "leeway_s": 5.0}
    data["health"] = {"stall_after_s": 60.0, "poll_stall_after_s": 60.0}
    data["gateways"]["webhook"].update({"timeout": 10.0, "tolerance_s": 300.0})
    return data


def test_every_numeric_setting_with_special_values(tmp_path: Path, kinds: dict[str, Any]) -> None:
    """Not random: each numeric setting of the full example in turn set to NaN, +-inf, -1 or 2**63. Each
    gives a ConfigError or a valid Settings without NaN or infinity (NaN passed [health] and gateway
    tables, inf every timer; see test_defect16_config_finite_numbers.py)."""
    base = _full_example()
    cfg = tmp_path / "config.toml"

    def outcome(data: dict[str, Any]) -> str:
        cfg.write_text(to_toml(data))
        try:
            s = load_settings(cfg)
            configs = validate_gateways(s, kinds)
            route_problems(s, {name: cls for name, (cls, _) in configs.items()})
        except ConfigError:
            return "error"
        return "non-finite" if not all(math.isfinite(f) for f in _floats(s)) else "ok"

    assert outcome(base) == "ok"
    paths = [p for p in _paths(base) if p and type(_parent(base, (*p, None))) in (int, float)]
    assert len(paths) > 40, paths  # the sweep really covers the tables
    bad = []
    for path in paths:
        for special in (math.nan, math.inf, -math.inf, -1, 2**63):
            data = copy.deepcopy(base)
            _parent(data, path)[path[-1]] = special
            result = outcome(data)
            if result == "non-finite":
                bad.append((".".join(map(str, path)), special))
    assert bad == []
