"""End-to-end fixtures: the whole app on the dev broker, a signing webhook sink, real mesh members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway.plugins.webhook.testing import WebhookSink
from claudemesh_gateway.plugins.webhook.testing import signed_post as _signed_post
from claudemesh_gateway.testing import build_test_app, dev_broker, mesh_member_factory, wait_until  # noqa: F401  (fixtures)

SECRET = "e2e-webhook-secret-0123456789"
FAST_POLL = {"topic_poll_interval": 0.2, "topic_poll_idle_interval": 0.5, "roster_refresh": 1.0,
             "rest": {"reseal_interval": 0.3, "key_retry_interval": 0.3}}  # sealed keys (A.13) without 30 s waits






@pytest.fixture
async def sink(aiohttp_server):
    s = WebhookSink(SECRET)
    server = await aiohttp_server(s.app())
    s.base = str(server.make_url("/sink"))
    return s


def signed_post(payload: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    return _signed_post(payload, secret)


@pytest.fixture
async def e2e_app(tmp_path: Path, dev_broker):  # noqa: F811
    """``client, runtime = await e2e_app(routes, binds_urls=..., delivery=...)``: the whole app with a
    webhook gateway ``wh`` (secret SECRET) on the dev broker; the gateway's mesh ``dev`` is connected."""
    clients = []

    async def make(routes: list[dict[str, Any]], *, delivery: dict[str, Any] | None = None,
                   mesh: dict[str, Any] | None = None) -> tuple[Any, Any]:
        state = tmp_path / f"gw{len(clients)}"
        state.mkdir()
        cfg: dict[str, Any] = {
            "gateways": {"wh": {"type": "webhook", "secret": SECRET}},
            "routes": routes,
            "mesh": {"dev": {**FAST_POLL, **(mesh or {})}},
            "delivery": {"backoff_base": 0.1, "backoff_cap": 0.5, "poll_interval": 0.5, **(delivery or {})},
        }
        client, runtime = await build_test_app(cfg, state_dir=state, broker=dev_broker)
        clients.append(client)
        if "dev" in runtime.meshes:
            await runtime.meshes["dev"].wait_connected(10)
            await wait_until(lambda: all(p.topic is not None for p in runtime.meshes["dev"].pollers.values())
                             and len(runtime.meshes["dev"].pollers) >= len(runtime.routes.watched_topics("dev")),
                             10, "topic pollers")
        return client, runtime

    try:
        yield make
    finally:
        for c in reversed(clients):
            await c.close()


@pytest.fixture
def member(dev_broker, mesh_member_factory):  # noqa: F811
    """``await member("dev_alice", on_message=..., groups=[...])``: a real mesh client (demo identity),
    stopped at teardown (``claudemesh_gateway.testing.mesh_member``)."""

    async def make(name: str, on_message=None, groups: tuple[str, ...] = ()):
        return await mesh_member_factory(dev_broker, name, on_message=on_message, groups=groups, options=FAST_POLL)

    return make
