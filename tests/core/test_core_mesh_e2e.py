"""The app against the dev broker: a mesh topic routed both ways to a gateway."""

from __future__ import annotations

import asyncio
from typing import Any

from claudemesh_gateway import GatewayState
from core_fakes import post_in

FAST = {"topic_poll_interval": 0.1, "topic_poll_idle_interval": 0.3}


def mesh_route_config() -> dict[str, Any]:
    return {
        "mesh": {"dev": FAST},
        "gateways": {"a": {"type": "memory"}},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general",
                    "binds": [{"gateway": "a", "chat": "room"}]}],
    }


async def alice_peer(runtime: Any, inbox: list[Any]) -> Any:
    from claudemesh_gateway.mesh.peer import MeshPeer
    from claudemesh_gateway.mesh.state import MemoryKV

    cfg = runtime.settings.mesh["dev_alice"].model_copy(update=FAST)
    peer = MeshPeer("dev_alice", cfg, kv=MemoryKV(), identity="cli", on_message=inbox.append)
    await peer.start()
    await peer.wait_connected(5)
    return peer


async def test_topic_to_gateway_and_back(gateway_app: Any, dev_broker: Any) -> None:
    from core_fakes import MemoryPlugin

    client, runtime = await gateway_app(mesh_route_config(), plugins=[("memtest", MemoryPlugin())], builtins=False)
    assert set(runtime.meshes) == {"dev"}  # dev_alice / dev_bob are CLI identities, not connected
    await runtime.meshes["dev"].wait_connected(5)
    inbox: list[Any] = []
    alice = await alice_peer(runtime, inbox)
    try:
        await alice.watch_topic("general", timeout=5)
        await alice.post_topic("general", "hello from alice")
        [out] = await runtime.gateways["a"].wait_sent(1, timeout=10)
        assert out.text == "alice: hello from alice" and out.to.chat == "room"

        resp = await post_in(client, "a", "42", "hi mesh", sender="carol")
        assert (await resp.json())["status"] == "queued"
        for _ in range(200):
            if any("hi mesh" in m.text for m in inbox):
                break
            await asyncio.sleep(0.05)
        [got] = [m for m in inbox if "hi mesh" in m.text]
        assert got.text.endswith("carol: hi mesh") and got.topic == "general" and got.sender_name == "gateway"
    finally:
        await alice.stop()
    health = await (await client.get("/-/health")).json()
    assert "dev" in str(health)
    assert runtime.states["dev"][0] == GatewayState.CONNECTED
