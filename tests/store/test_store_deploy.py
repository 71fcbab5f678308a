"""deploy/docker-compose.yml and its gateway configs: what the compose file promises holds."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from claudemesh_gateway.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_replicas_config_loads_with_the_dsn_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDEMESH_STORE__DSN", "postgresql://gateway:pw@postgres:5432/gateway")
    s = load_settings(DEPLOY / "compose" / "config.toml")
    assert s.store.backend == "postgres" and s.store.dsn_value().endswith("@postgres:5432/gateway")
    assert s.server.host == "0.0.0.0" and s.server.port == 8080


def test_compose_demo_config_points_the_replicas_at_the_broker_container() -> None:
    demo = tomllib.loads((DEPLOY / "compose" / "demo.toml").read_text())
    assert demo["include"] == ["/var/lib/devbroker/meshes.toml"]
    assert demo["store"]["backend"] == "postgres" and "dsn" not in demo["store"]
    assert demo["mesh"]["dev"]["broker_url"] == "ws://devbroker:7900/ws"

