"""Shared fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture(scope="session")
def mesh_vectors() -> dict:
    return json.loads((VECTORS / "mesh-vectors.json").read_text())


def pytest_configure(config: pytest.Config) -> None:
    """The fake vendors listen on 127.0.0.1: let file downloads reach loopback there (see
    ``claudemesh_gateway.files``); the SSRF tests take the setting away again where they need to."""
    import os

    from claudemesh_gateway.files import LOOPBACK_ENV

    os.environ.setdefault(LOOPBACK_ENV, "1")


@pytest.fixture(scope="session")
def topic_key_vectors() -> dict:
    return json.loads((VECTORS / "topic-key-vectors.json").read_text())
