"""First-start seeding, meshes.toml, persistence across restarts, the CLI entry points."""

from __future__ import annotations

import asyncio
import re
import tomllib

from claudemesh_gateway.devbroker import DevBroker, MemberInfo
from claudemesh_gateway.devbroker.cli import build_parser, mint_invite_offline, run
from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.crypto import KeyPair


async def test_first_start_seeds_and_writes_meshes_toml(make_broker, tmp_path, connect):
    b = await make_broker(tmp_path / "s")
    seed = b.default_mesh
    doc = tomllib.loads((tmp_path / "s" / "meshes.toml").read_text())
    assert set(doc["mesh"]) == {"dev", "dev_alice", "dev_bob"}
    assert doc["mesh"] == b.mesh_tables()
    for table, name in (("dev", "gateway"), ("dev_alice", "alice"), ("dev_bob", "bob")):
        t = doc["mesh"][table]
        assert set(t) == {"broker_url", "mesh_id", "member_id", "secret_key", "root_key", "display_name", "rest"}
        assert t["rest"] == {"url": b.http_url} == {"url": b.rest_url}   # /api/v1 on the broker's HTTP port
        assert t["broker_url"] == b.ws_url and t["broker_url"].endswith(f":{b.port}/ws")
        assert t["mesh_id"] == seed.mesh_id and len(t["mesh_id"]) == 32
        assert t["display_name"] == name and re.fullmatch(r"[0-9a-f]{128}", t["secret_key"])
        assert len(t["root_key"]) == 43 and len(crypto.unb64url(t["root_key"])) == 32
        kp = KeyPair.from_secret_hex(t["secret_key"])
        member = b.store.members[t["member_id"]]
        assert member.peer_pubkey == kp.public_hex and member.display_name == name
        c = await connect(b, MemberInfo(t["member_id"], t["mesh_id"], name, member.role, kp))   # usable as is
        assert c.ack["memberDisplayName"] == name
    mesh = b.store.meshes[seed.mesh_id]
    assert mesh.slug == "dev" and mesh.owner_pubkey == seed.mesh.owner.public_hex
    general = b.store.topics[seed.general_topic_id]
    assert general.name == "general" and general.encrypted_key_pubkey is None
    assert {tm.member_id for tm in b.store.topic_members if tm.topic_id == general.id} == {
        seed.gateway.member_id, seed.alice.member_id, seed.bob.member_id}
    # "team": a sealed-key topic created by the gateway, so only the gateway holds a sealed copy
    team = b.store.topic_by_name(seed.mesh_id, "team")
    assert team is not None and team.encrypted_key_pubkey is not None
    assert {tm.member_id for tm in b.store.topic_members if tm.topic_id == team.id} == {
        seed.gateway.member_id, seed.alice.member_id, seed.bob.member_id}
    assert b.sealed_topic_key(team.id, seed.gateway.member_id) is not None
    assert b.sealed_topic_key(team.id, seed.alice.member_id) is None


async def test_restart_keeps_state(tmp_path, connect, mk):
    state = tmp_path / "persist"
    b1 = DevBroker(state, config=mk.fast_config())
    await b1.start()
    seed = b1.default_mesh
    alice = await connect(b1, seed.alice)
    t = b1.create_topic(seed.mesh_id, "keep", seed.alice.member_id)
    post = await alice.send_msg("#" + t.topic_id, bodyVersion=3)
    held = await alice.send_msg("#general")                  # an undelivered queue row
    carol = b1.add_member(seed.mesh_id, "carol")
    token = b1.mint_invite(seed.mesh_id)
    port1 = b1.port
    await b1.stop()
    assert await alice.wait_closed() == (1001, "shutting down")

    b2 = DevBroker(state, config=mk.fast_config())
    await b2.start()
    try:
        again = b2.default_mesh
        assert again.mesh_id == seed.mesh_id and again.alice.pubkey == seed.alice.pubkey
        assert again.mesh.root_key_b64url == seed.mesh.root_key_b64url
        assert b2.store.members[carol.member_id].display_name == "carol"
        assert b2.topic_id(seed.mesh_id, "keep") == t.topic_id
        assert b2.sealed_topic_key(t.topic_id, seed.alice.member_id) is not None
        assert [m.body_version for m in b2.topic_messages(topic_id=t.topic_id)] == [3]
        assert {post["messageId"], held["messageId"]} <= {r.id for r in b2.queue_rows()}
        assert token in b2.store.invites
        assert b2.store.peer_states[(seed.mesh_id, seed.alice.member_id)].last_seen_at > 0
        assert b2.presences() == [] and b2.mesh_count(seed.mesh_id) == 0    # presences are not persisted
        doc = tomllib.loads((state / "meshes.toml").read_text())
        assert doc["mesh"]["dev"]["broker_url"] == b2.ws_url
        assert b2.port != port1 or b2.ws_url.endswith(f":{port1}/ws")
    finally:
        await b2.stop()


async def test_cli_run_and_offline_mint_invite(tmp_path, http, capsys):
    state = tmp_path / "cli"
    stop = asyncio.Event()
    task = asyncio.create_task(run(state, "127.0.0.1", 0, stop=stop))
    for _ in range(200):
        if (state / "meshes.toml").exists():
            break
        await asyncio.sleep(0.02)
    url = tomllib.loads((state / "meshes.toml").read_text())["mesh"]["dev"]["broker_url"]
    http_url = url.replace("ws://", "http://").removesuffix("/ws")
    token = mint_invite_offline(state, mesh="dev")      # written while the broker runs
    _, payload = crypto.decode_invite(token)
    assert payload["broker_url"] == url                 # taken from meshes.toml
    resp = await http.post(http_url + "/join", json={"invite_token": token, "invite_payload": payload,
                                                     "peer_pubkey": KeyPair.generate().public_hex,
                                                     "display_name": "cli-joiner"})
    assert resp.status == 200 and (await resp.json())["ok"] is True    # the running broker adopted it
    stop.set()
    await asyncio.wait_for(task, 10)
    assert "dev broker: ws://127.0.0.1:" in capsys.readouterr().out
    args = build_parser().parse_args(["--state-dir", str(state), "mint-invite", "--role", "admin"])
    assert (args.command, args.role, args.port) == ("mint-invite", "admin", 7900)


def test_row_times_strictly_increase():
    from itertools import pairwise

    from claudemesh_gateway.devbroker.util import iso, row_time

    unique = [row_time() for _ in range(50)]
    assert all(b - a >= 1 for a, b in pairwise(unique))        # own millisecond each
    assert len({iso(t) for t in unique}) == 50
    fine = [row_time(unique_ms=False) for _ in range(50)]
    assert all(b > a for a, b in pairwise(fine))
