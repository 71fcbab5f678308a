"""Fixtures for the core's own tests: a throwaway in-memory gateway kind and an app factory."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode: make core_fakes importable

from claudemesh_gateway.testing import build_test_app, dev_broker, gateway_app  # noqa: F401  (fixtures)
from core_fakes import JOURNAL, MemoryPlugin


@pytest.fixture
def journal() -> list[str]:
    JOURNAL.clear()
    return JOURNAL


TWO_ROOMS: dict[str, Any] = {
    "gateways": {"a": {"type": "memory"}, "b": {"type": "memory"}},
    "routes": [{"name": "ab", "binds": [{"gateway": "a", "chat": "room"}, {"gateway": "b", "chat": "room"}]}],
    "delivery": {"backoff_base": 0.05, "backoff_cap": 0.2, "max_attempts": 2},
}


@pytest.fixture
async def core_app(
    tmp_path: Path, journal: list[str]
) -> AsyncIterator[Callable[..., Awaitable[tuple[Any, Any]]]]:
    """Factory: ``client, runtime = await core_app(config=None, plugins=[(name, obj)])``; the
    ``memtest`` plugin (gateway kind ``memory``) is always loaded. Apps are closed at teardown."""
    clients: list[Any] = []

    async def make(config: dict[str, Any] | None = None, plugins: list[tuple[str, object]] | None = None,
                   builtins: bool = False) -> tuple[Any, Any]:
        state = tmp_path / f"app{len(clients)}"
        state.mkdir()
        client, runtime = await build_test_app(
            TWO_ROOMS if config is None else config, state_dir=state,
            plugins=[("memtest", MemoryPlugin()), *(plugins or [])], builtins=builtins,
        )
        clients.append(client)
        return client, runtime

    yield make
    for client in reversed(clients):
        await client.close()
