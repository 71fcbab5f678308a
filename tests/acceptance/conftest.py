"""Acceptance-audit fixtures: the REAL app (built from a config file on disk, so reload works),
a signing webhook sink on loopback, real mesh members on the dev broker, admin tokens.

Copied in spirit from tests/e2e/conftest.py (importlib mode: no cross-directory conftest imports).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from claudemesh_gateway.plugins.webhook.testing import WebhookSink
from claudemesh_gateway.plugins.webhook.testing import signed_post as _signed_post
from claudemesh_gateway.testing import (  # noqa: F401  (fixtures; wait_until re-exported)
    build_test_app_from_file,
    dev_broker,
    mesh_member_factory,
    wait_until,
)

WH_SECRET = "acceptance-webhook-secret-0123456789"
JWT_SECRET = "acceptance-jwt-secret-0123456789-abcdef"
AUD = "claudemesh-gateway"
FAST_POLL = {"topic_poll_interval": 0.2, "topic_poll_idle_interval": 0.5, "roster_refresh": 1.0}




def admin_token(*, aud: str = AUD, exp_in: float = 300, sub: str = "auditor@example") -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "aud": aud, "iat": now, "exp": now + int(exp_in)}, JWT_SECRET, algorithm="HS256")


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}




@pytest.fixture
async def sink(aiohttp_server):
    s = WebhookSink(WH_SECRET)
    server = await aiohttp_server(s.app(), host="127.0.0.1")
    s.base = str(server.make_url("/sink"))
    return s


def signed_post(payload: dict[str, Any], secret: str = WH_SECRET) -> tuple[bytes, dict[str, str]]:
    return _signed_post(payload, secret)


async def post_inbound(client: TestClient, chat: str, payload: dict[str, Any], gateway: str = "wh") -> dict[str, Any]:
    body, headers = signed_post(payload)
    resp = await client.post(f"/gateways/{gateway}/{chat}", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(cfg: dict[str, Any]) -> str:
    """A tiny TOML writer for the config shapes these tests use (tables of scalars, arrays of tables)."""
    lines: list[str] = []
    scalars = {k: v for k, v in cfg.items() if not isinstance(v, dict) and not (
        isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
    for k, v in scalars.items():
        lines.append(f"{k} = {toml_value(v)}")

    def table(prefix: str, d: dict[str, Any]) -> None:
        flat = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if flat or not subs:
            lines.append(f"[{prefix}]")
            for k, v in flat.items():
                lines.append(f"{k} = {toml_value(v)}")
        for k, v in subs.items():
            table(f"{prefix}.{k}", v)

    for k, v in cfg.items():
        if isinstance(v, dict):
            table(k, v)
    for k, v in cfg.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"[[{k}]]")
                for ik, iv in item.items():
                    lines.append(f"{ik} = {toml_value(iv)}")
    return "\n".join(lines) + "\n"


async def start_app_from_file(path: Path) -> tuple[TestClient, Any]:
    """The real app as ``claudemesh-gateway run`` builds it (minus signals), from a TOML file on disk."""
    return await build_test_app_from_file(path)


@pytest.fixture
async def file_app(tmp_path: Path):
    """``client, runtime, path = await file_app(cfg_dict, meshes=dev_broker_or_None)``: writes the config
    as TOML (with ``include`` of the dev broker's meshes.toml when given) and starts the real app."""
    clients: list[TestClient] = []

    async def make(cfg: dict[str, Any], *, broker: Any | None = None) -> tuple[TestClient, Any, Path]:
        n = len(clients)
        state = tmp_path / f"gw{n}"
        state.mkdir()
        full = {**cfg}
        if broker is not None:
            full = {"include": [str(Path(broker.state_dir) / "meshes.toml")], **full}
        full["server"] = {"state_dir": str(state), "shutdown_timeout": 5.0, **cfg.get("server", {})}
        path = tmp_path / f"gw{n}.toml"
        path.write_text(to_toml(full))
        client, runtime = await start_app_from_file(path)
        clients.append(client)
        return client, runtime, path

    try:
        yield make
    finally:
        for c in reversed(clients):
            await c.close()


@pytest.fixture
async def member(dev_broker, mesh_member_factory):  # noqa: F811
    """``await member("dev_alice", on_message=...)``: a real mesh client with a demo identity."""

    async def make(name: str, on_message=None, groups: tuple[str, ...] = ()):
        return await mesh_member_factory(dev_broker, name, on_message=on_message, groups=groups, options=FAST_POLL)

    return make
