"""CLI helpers: keygen, enroll against the dev broker's /join, peers/send/tail with an ephemeral identity."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from claudemesh_gateway.errors import MeshError
from claudemesh_gateway.mesh import MemoryKV, MeshConfig, crypto, tools
from claudemesh_gateway.mesh.crypto import KeyPair


def test_keygen_writes_0600_and_never_overwrites(tmp_path):
    path = tmp_path / "keys" / "member.key"
    out = tools.keygen(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert out["pubkey"] == KeyPair.from_secret_hex(path.read_text().splitlines()[-1]).public_hex
    before = path.read_text()
    with pytest.raises(MeshError, match="already exists"):
        tools.keygen(path)
    assert path.read_text() == before
    bare = tools.keygen()
    assert KeyPair.from_secret_hex(bare["secret_key"]).public_hex == bare["pubkey"]


async def test_enroll_with_a_minted_invite_then_connect(broker, tmp_path, make_peer, new_inbox):
    seed = broker.default_mesh
    token = broker.mint_invite(seed.mesh_id)
    key = tmp_path / "gw.key"
    res = await tools.enroll(f"https://claudemesh.com/join/{token}", display_name="bridge", key_path=key)
    cfg_values = res["config"]
    assert res["name"] == "dev" and res["already_member"] is False
    assert cfg_values["root_key"] == seed.mesh.root_key_b64url and cfg_values["mesh_id"] == seed.mesh_id
    assert "secret_key" not in cfg_values and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert res["toml"].startswith("[mesh.dev]\n") and f'member_id = "{cfg_values["member_id"]}"' in res["toml"]

    # the enrolled identity can connect and read a v3 post
    cfg = MeshConfig(**cfg_values, topic_poll_interval=0.05, topic_poll_idle_interval=0.2)
    inbox = new_inbox()
    from claudemesh_gateway.mesh import MeshPeer

    peer = MeshPeer("dev", cfg, kv=MemoryKV(), on_message=inbox)
    await peer.start()
    try:
        await peer.wait_connected(5)
        await peer.watch_topic("general")
        alice = await make_peer(seed.alice)
        await alice.post_topic("general", "welcome")
        await inbox.wait(1)
        assert inbox.texts == ["welcome"]
    finally:
        await peer.stop()

    # single use: a second identity is refused with a clear reason, and no key file is left behind
    key2 = tmp_path / "gw2.key"
    with pytest.raises(tools.EnrollError, match="already used up"):
        await tools.enroll(token, key_path=key2)
    assert not key2.exists()


async def test_enroll_rejects_bad_invites_before_any_request(broker):
    seed = broker.default_mesh
    token = broker.mint_invite(seed.mesh_id)
    _, payload = crypto.decode_invite(token)
    tampered = dict(payload, role="admin")
    bad = crypto.b64url(json.dumps(tampered).encode())
    with pytest.raises(tools.EnrollError, match="signature does not verify"):
        await tools.enroll(bad)
    expired = broker.mint_invite(seed.mesh_id, expires_in=-10)
    with pytest.raises(tools.EnrollError, match="expired"):
        await tools.enroll(expired)
    with pytest.raises(tools.EnrollError, match="not a v1 invite"):
        await tools.enroll("garbage!!")


async def test_enroll_reports_broker_side_refusal(broker):
    other = broker.create_mesh("other")
    token = broker.mint_invite(other.mesh_id)
    broker.store.invites.clear()  # the broker no longer knows the (validly signed) invite
    with pytest.raises(tools.EnrollError, match="does not know this invite") as ei:
        await tools.enroll(token)
    assert "(invite_not_found)" in str(ei.value)


async def test_peers_send_and_tail_use_an_ephemeral_identity(broker, make_peer, new_inbox):
    seed = broker.default_mesh
    kv = MemoryKV()
    inbox = new_inbox()
    gw = await make_peer(seed.gateway, kv=kv)  # the "running gateway"
    alice = await make_peer(seed.alice, on_message=inbox)
    cfg = gw.cfg

    roster = await tools.peers("dev", cfg)
    names = sorted(p["displayName"] for p in roster)
    assert names == ["alice", "gateway", "gateway"]
    assert next(p for p in roster if p["self"])["sessionId"].startswith("gw-cli-")

    out = await tools.send("dev", cfg, "hi from the cli", to="Alice")
    assert out["to"] == alice.session_pubkey and out["messageId"]
    await inbox.wait(1)
    assert inbox.texts == ["hi from the cli"]

    tail = asyncio.create_task(tools.tail("dev", cfg, "general", count=3, timeout=10))
    await asyncio.sleep(0.5)
    posted = await tools.send("dev", cfg, "own row", topic="general")  # our own member's row is shown too
    await alice.post_topic("general", "alice row 1")
    await alice.post_topic("general", "alice row 2")
    rows = await asyncio.wait_for(tail, 10)
    assert [r["text"] for r in rows] == ["own row", "alice row 1", "alice row 2"]
    assert rows[0]["id"] == posted["id"] and rows[1]["sender"] == "alice"
    assert rows[0]["createdAt"].endswith("Z")
    assert gw.state == "connected"  # the tools never took the gateway's session over

    with pytest.raises(MeshError, match="no peer named"):
        await tools.send("dev", cfg, "x", to="nobody")
    with pytest.raises(MeshError, match="exactly one"):
        await tools.send("dev", cfg, "x")
