"""B.47 ``POST /join`` (A.14) and ``GET /health``."""

from __future__ import annotations

import time

from claudemesh_gateway.devbroker import MemberInfo
from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.crypto import KeyPair


async def _join(http, broker, token, payload=None, pubkey=None, name="newbie", **over):
    body = {"invite_token": token, "invite_payload": payload if payload is not None else crypto.decode_invite(token)[1],
            "peer_pubkey": pubkey or KeyPair.generate().public_hex, "display_name": name, **over}
    resp = await http.post(broker.http_url + "/join", json=body)
    return resp.status, await resp.json()


async def test_b47_join_with_v1_invite(broker, http, connect):
    seed = broker.default_mesh
    resp = await http.get(broker.http_url + "/health")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"

    token = broker.mint_invite(seed.mesh_id, role="admin", max_uses=2)
    _, payload = crypto.decode_invite(token)
    crypto.verify_invite(payload, time.time())                      # same JSON and signature as the real broker
    assert (payload["mesh_id"], payload["mesh_slug"], payload["broker_url"], payload["role"],
            payload["owner_pubkey"], payload["mesh_root_key"]) == (
        seed.mesh_id, "dev", broker.ws_url, "admin", seed.mesh.owner.public_hex, seed.mesh.root_key_b64url)
    me = KeyPair.generate()
    status, body = await _join(http, broker, token, pubkey=me.public_hex, name="Newbie")
    assert status == 200 and body["ok"] is True and "alreadyMember" not in body
    member = broker.store.members[body["memberId"]]
    assert (member.display_name, member.role, member.peer_pubkey) == ("Newbie", "admin", me.public_hex)
    status, again = await _join(http, broker, token, pubkey=me.public_hex)        # idempotent per pubkey
    assert (status, again) == (200, {"ok": True, "memberId": body["memberId"], "alreadyMember": True})
    assert broker.store.invites[token].used_count == 1
    # the new identity can say hello
    info = MemberInfo(body["memberId"], seed.mesh_id, "Newbie", "admin", me)
    c = await connect(broker, info, mode="hello")
    assert c.ack["memberDisplayName"] == "Newbie"


async def test_b47_join_errors(broker, http):
    seed = broker.default_mesh
    token = broker.mint_invite(seed.mesh_id)
    _, payload = crypto.decode_invite(token)

    async def err(expected, *args, **kw):
        status, body = await _join(http, broker, *args, **kw)
        assert (status, body) == (400, {"ok": False, "error": expected}), (expected, body)

    await err("invite_token, invite_payload, peer_pubkey, display_name required", token, name="")
    await err("invite_token, invite_payload, peer_pubkey, display_name required", "", payload)
    await err("peer_pubkey must be 64 hex chars (32 bytes)", token, pubkey="abc")
    await err("invite_bad_signature", token, {**payload, "role": "admin"})
    other_owner = KeyPair.generate()
    forged = crypto.decode_invite(crypto.mint_invite({**payload, "owner_pubkey": other_owner.public_hex},
                                                     other_owner))[1]
    await err("invite_owner_mismatch", token, forged)
    ghost = crypto.decode_invite(crypto.mint_invite({**payload, "mesh_id": "X" * 32}, seed.mesh.owner))[1]
    await err("mesh_not_found", token, ghost)
    await err("invite_not_found", "not-a-token", payload)
    mesh2 = broker.create_mesh("second")
    token2 = broker.mint_invite(mesh2.mesh_id)
    await err("invite_mesh_mismatch", token2, payload)     # payload names dev, the invite row belongs to mesh2
    broker.store.meshes[mesh2.mesh_id].owner_pubkey = ""
    await err("mesh_missing_owner_key", token2)
    broker.store.invites[token].revoked_at = 1
    await err("invite_revoked", token)
    broker.store.invites[token].revoked_at = None
    expired = broker.mint_invite(seed.mesh_id, expires_in=-10)
    await err("invite_expired", expired)
    status, _ = await _join(http, broker, token)
    assert status == 200
    await err("invite_exhausted", token)                    # single use, checked before alreadyMember
    resp = await http.post(broker.http_url + "/join", data=b"{" + b" " * 70_000 + b"}",
                           headers={"Content-Type": "application/json"})
    assert resp.status == 413 and await resp.json() == {"ok": False, "error": "payload too large"}
