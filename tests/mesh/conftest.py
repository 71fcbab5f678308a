"""Fixtures for the mesh peer tests: an in-process DevBroker and peers with fast timers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from claudemesh_gateway.devbroker import DevBroker, DevBrokerConfig
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, MeshPeer

FAST = {
    "backoff": [0.05, 0.1, 0.2], "backoff_jitter": 0.2, "hello_timeout": 3.0, "ack_timeout": 3.0,
    "request_timeout": 3.0, "topic_poll_interval": 0.05, "topic_poll_idle_interval": 0.2, "ping_interval": 1.0,
    "idle_timeout": 10.0, "roster_refresh": 1.0, "reattach_redrain_delay": 0.3, "capacity_backoff": 0.5,
}


@pytest.fixture
async def broker(tmp_path):
    b = DevBroker(tmp_path / "broker", config=DevBrokerConfig(grace_s=5.0, claim_s=1.0, sweep_interval_s=0.5,
                                                              persist_debounce_s=0.01))
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


class Inbox:
    """Collects what a peer's ``on_message`` receives; ``wait(n)`` blocks until n items arrived."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = asyncio.Condition()

    async def __call__(self, item: Any) -> None:
        async with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    async def wait(self, n: int, timeout: float = 10.0) -> list[Any]:
        async def _w() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: len(self.items) >= n)
        await asyncio.wait_for(_w(), timeout)
        return list(self.items)

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.items]


def mesh_cfg(broker: DevBroker, member: Any, **over: Any) -> MeshConfig:
    seed = broker.default_mesh
    data = {
        "broker_url": broker.ws_url, "mesh_id": member.mesh_id, "member_id": member.member_id,
        "secret_key": member.secret_hex, "root_key": broker.mesh_info(member.mesh_id).root_key_b64url,
        "display_name": member.display_name, **FAST,
    }
    data.update(over)
    del seed
    return MeshConfig(**data)


@pytest.fixture
async def make_peer(broker):
    peers: list[MeshPeer] = []

    async def make(member: Any, *, kv: Any = None, on_message: Any = None, connect: bool = True,
                   name: str = "dev", identity: str = "service", clock: Callable[[], float] | None = None,
                   **over: Any) -> MeshPeer:
        kwargs = {"clock": clock} if clock is not None else {}
        peer = MeshPeer(name, mesh_cfg(broker, member, **over), kv=kv if kv is not None else MemoryKV(),
                        on_message=on_message, identity=identity, **kwargs)
        peers.append(peer)
        await peer.start()
        if connect:
            await peer.wait_connected(5)
        return peer

    yield make
    for p in reversed(peers):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(p.stop(), 5)


async def eventually(pred: Callable[[], Any], timeout: float = 5.0, step: float = 0.02) -> None:
    """Wait until ``pred()`` is truthy (awaits coroutine results); fail with AssertionError on timeout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        res = pred()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


@pytest.fixture
def new_inbox() -> Callable[[], Inbox]:
    return Inbox


@pytest.fixture(name="eventually")
def eventually_fixture() -> Callable[..., Any]:
    return eventually
