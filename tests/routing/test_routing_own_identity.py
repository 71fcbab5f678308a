"""The loop guard's own identities of a mesh peer follow the peer (a reconnect changes the session key)."""

from __future__ import annotations

from claudemesh_gateway.mesh.types import MeshInbound

from .conftest import GATEWAY_PK

ROOM = {"name": "room", "mesh": "m", "topic": "general", "binds": [{"gateway": "tg", "chat": "c1"}]}
NEW_KEY = "5e" * 32


def row(id: str, sender: str) -> MeshInbound:
    return MeshInbound(kind="topic", mesh="m", mesh_id="mesh-id", id=id, text="hi", sender_pubkey=sender,
                       sender_name="gw", topic="general", created_at=1_700_000_000_000)


async def test_own_identities_follow_a_changed_peer(make_runtime):
    rt = make_runtime([ROOM])
    peer = rt.meshes["m"]
    first = await rt.pipeline.on_mesh_inbound(row("r1", GATEWAY_PK))
    assert (first.status, first.reason) == ("dropped", "loop")
    assert (await rt.pipeline.on_mesh_inbound(row("r2", NEW_KEY))).status == "queued"
    peer.pubkey = NEW_KEY  # what a reconnect with a new session identity does
    again = await rt.pipeline.on_mesh_inbound(row("r3", NEW_KEY))
    assert (again.status, again.reason) == ("dropped", "loop")
    assert (await rt.pipeline.on_mesh_inbound(row("r4", GATEWAY_PK))).status == "queued"
    peer.session_pubkey = "7a" * 32  # a new attribute counts too
    late = await rt.pipeline.on_mesh_inbound(row("r5", "7a" * 32))
    assert (late.status, late.reason) == ("dropped", "loop")
