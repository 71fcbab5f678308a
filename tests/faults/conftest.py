"""Fixtures of the whole-app fault tests: the dev broker (in this process, so its state outlives
every gateway kill), a signing webhook sink on loopback, a mesh member that posts. The harness
itself is ``harness.py`` (importable: ``from .harness import ...``)."""

from __future__ import annotations

import pytest
from claudemesh_gateway.plugins.webhook.testing import WebhookSink
from claudemesh_gateway.testing import dev_broker, mesh_member_factory  # noqa: F401  (fixtures)

from .harness import EXE, FAST_POLL, LIFTED, WH_SECRET

if not EXE.exists():  # pragma: no cover - an installed package always has its console script
    pytest.skip("the claudemesh-gateway console script is not installed next to the interpreter",
                allow_module_level=True)


@pytest.fixture
async def sink(aiohttp_server):
    s = WebhookSink(WH_SECRET)
    server = await aiohttp_server(s.app(), host="127.0.0.1")
    s.base = str(server.make_url("/sink"))
    return s


@pytest.fixture
async def alice(dev_broker, mesh_member_factory):  # noqa: F811
    """``dev_alice`` on the dev broker, its own limits lifted like the broker's."""
    return await mesh_member_factory(dev_broker, "dev_alice", options={**FAST_POLL, **LIFTED})
