"""Shared fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture(scope="session")
def mesh_vectors() -> dict:
    return json.loads((VECTORS / "mesh-vectors.json").read_text())


@pytest.fixture(scope="session")
def topic_key_vectors() -> dict:
    return json.loads((VECTORS / "topic-key-vectors.json").read_text())
