"""``{origin_mesh}`` / ``{origin}`` in attribution templates, and ``/dm`` across meshes
(``peer@mesh``, bridges with ``allow_dm``), against a real SqliteStore and fakes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest
from claudemesh_gateway import Address
from claudemesh_gateway.mesh.types import MeshInbound, Peer
from claudemesh_gateway.routing.commands import HELP_TEXT
from claudemesh_gateway.routing.config import RouteConfig

from .conftest import ALICE, BOB, CAROL, FakeGateway, FakePeer, drain, msg

BOB_N = "d4" * 32


class FarGateway(FakeGateway):
    """Stands for a bridge: its chats lie on mesh ``config.mesh``."""

    kind: ClassVar[str] = "farbridge"

    def mesh_of(self, address: Address) -> str | None:
        return self.config.mesh


def _runtime(make_runtime, routes, *, allow_dm: bool = True, extra_meshes=()):
    gateways = {"tg": FakeGateway("tg"), "sl": FakeGateway("sl"),
                "to_n": FarGateway("to_n", SimpleNamespace(mesh="n", allow_dm=allow_dm))}
    meshes = {
        "m": FakePeer("m", roster=[Peer(pubkey=ALICE, display_name="alice"), Peer(pubkey=BOB, display_name="bob")]),
        "n": FakePeer("n", roster=[Peer(pubkey=BOB_N, display_name="bob"), Peer(pubkey=CAROL, display_name="carol")]),
    }
    for name in extra_meshes:
        meshes[name] = FakePeer(name, roster=[Peer(pubkey=BOB, display_name="bob")])
    return make_runtime(routes, gateways=gateways, meshes=meshes)


def _room(**kw):
    return {"name": "room", "mesh": "m", "topic": "general",
            "binds": [{"gateway": "tg", "chat": "c1"}, {"gateway": "to_n", "chat": "lobby"}], **kw}


def _topic_row(text, *, id="tm-1", sender=ALICE, name="alice", kind="topic"):
    return MeshInbound(kind=kind, mesh="m", mesh_id="mesh-id", id=id, text=text, sender_pubkey=sender,
                       sender_name=name, topic="general" if kind == "topic" else None,
                       created_at=1_700_000_000_000)


# -- attribution -------------------------------------------------------------------------------------------
def test_templates_accept_the_origin_fields():
    for template in ("{sender} @ {origin_mesh}: {text}", "{sender} ({origin}): {text}"):
        assert RouteConfig.model_validate({"name": "r", "mesh": "m", "topic": "t",
                                           "attribution": template}).attribution == template
    with pytest.raises(ValueError, match="origin_mesh"):  # the error lists the valid fields
        RouteConfig.model_validate({"name": "r", "mesh": "m", "topic": "t", "attribution": "{from}: {text}"})


async def test_one_two_way_route_names_the_source_mesh_in_both_directions(make_runtime):
    rt = _runtime(make_runtime, [_room(attribution="{sender} @ {origin_mesh} ({origin}): {text}")])
    await rt.pipeline.on_mesh_inbound(_topic_row("from m"))
    far = msg("from n", gateway="to_n", chat="lobby", sender="bob", sender_id=BOB_N, mid="to_n:n:1")
    await rt.pipeline.submit(far)
    await rt.pipeline.submit(msg("from telegram", chat="c1", mid="tg:1"))
    await drain(rt)
    assert [o.text for o in rt.gateways["to_n"].sent] == [
        "__cmh1:alice @ m (mesh m): from m",  # the route's mesh, written on m
        "[via tg] Ann @ m (tg): from telegram",  # a platform message: the route's mesh, origin = gateway
    ]
    assert [p["text"] for p in rt.meshes["m"].posts] == [
        "__cmh1:bob @ n (mesh n): from n",  # same route, other direction: the far mesh
        "[via tg] Ann @ m (tg): from telegram",
    ]
    assert [o.text for o in rt.gateways["tg"].sent] == ["alice @ m (mesh m): from m", "bob @ n (mesh n): from n"]


async def test_origin_mesh_without_a_route_mesh_is_the_gateway(make_runtime):
    tags = {"name": "tags", "tags": ["x"], "direction": "out", "attribution": "{sender} @ {origin_mesh}: {text}",
            "binds": [{"gateway": "sl", "chat": "C9"}]}
    rt = _runtime(make_runtime, [_room(), tags])
    await rt.pipeline.submit(msg("tag:x hello", chat="c1", mid="tg:x"))
    await rt.pipeline.on_mesh_inbound(_topic_row("tag:x from m", id="tm-x"))
    await drain(rt)
    assert [o.text for o in rt.gateways["sl"].sent] == ["Ann @ tg: hello", "alice @ m: from m"]


# -- /dm across meshes ---------------------------------------------------------------------------------------
def _replies(rt):
    return [o.text for o in rt.gateways["tg"].sent]


async def test_help_mentions_peer_at_mesh():
    assert "/dm <peer>@<mesh> <text>" in HELP_TEXT and "/dm <peer> <text>" in HELP_TEXT


async def test_dm_reaches_a_far_mesh_through_a_bridge_that_allows_it(make_runtime):
    rt = _runtime(make_runtime, [_room()])
    await rt.pipeline.submit(msg("/dm carol hi carol", chat="c1", mid="d1"))  # only on n
    await rt.pipeline.submit(msg("/dm bob@n hi far bob", chat="c1", mid="d2"))
    await rt.pipeline.submit(msg("/dm bob@m hi near bob", chat="c1", mid="d3"))
    await drain(rt)
    assert _replies(rt) == ["DM to carol on n queued.", "DM to bob on n queued.", "DM to bob on m queued."]
    assert [(d["pubkey"], d["text"]) for d in rt.meshes["n"].dms] == [
        (CAROL, "[via tg] Ann: hi carol"), (BOB_N, "[via tg] Ann: hi far bob")]
    assert [(d["pubkey"], d["text"]) for d in rt.meshes["m"].dms] == [(BOB, "[via tg] Ann: hi near bob")]
    assert rt.meshes["m"].posts == [] and rt.gateways["to_n"].sent == []  # never relayed


async def test_dm_to_a_name_on_several_meshes_asks_for_the_mesh(make_runtime):
    rt = _runtime(make_runtime, [_room()])
    await rt.pipeline.submit(msg("/dm bob hello", chat="c1", mid="amb"))
    await drain(rt)
    [reply] = _replies(rt)
    assert "'bob' is on several meshes (m, n)" in reply and "/dm bob@<mesh>" in reply
    assert rt.meshes["m"].dms == [] and rt.meshes["n"].dms == []


async def test_dm_through_a_bridge_with_allow_dm_false_is_refused(make_runtime):
    rt = _runtime(make_runtime, [_room()], allow_dm=False)
    await rt.pipeline.submit(msg("/dm bob@n hi", chat="c1", mid="r1"))
    await rt.pipeline.submit(msg("/dm carol hi", chat="c1", mid="r2"))
    await rt.pipeline.submit(msg("/dm bob hi", chat="c1", mid="r3"))  # not ambiguous: n is not searched
    await drain(rt)
    r1, r2, r3 = _replies(rt)
    assert r1 == "DMs to mesh n are off: bridge to_n has allow_dm = false. Nothing was sent."
    assert r2.startswith("No peer named 'carol' on the bridged mesh(es)")
    assert "mesh n is not searched: bridge to_n has allow_dm = false" in r2
    assert r3 == "DM to bob queued."
    assert rt.meshes["n"].dms == []
    assert [d["pubkey"] for d in rt.meshes["m"].dms] == [BOB]


async def test_dm_to_unbridged_or_unknown_mesh(make_runtime):
    rt = _runtime(make_runtime, [_room()], extra_meshes=("o",))
    await rt.pipeline.submit(msg("/dm bob@o hi", chat="c1", mid="u1"))
    await rt.pipeline.submit(msg("/dm bob@zz hi", chat="c1", mid="u2"))
    await drain(rt)
    r1, r2 = _replies(rt)
    assert r1 == "Mesh o is not bridged to this chat. Nothing was sent."
    assert r2.startswith("No peer named 'bob@zz'") and "There is no mesh named 'zz'." in r2
    assert all(not p.dms for p in rt.meshes.values())


async def test_mesh_dm_to_the_gateway_reaches_the_far_mesh_attributed_with_its_mesh(make_runtime):
    rt = _runtime(make_runtime, [_room()])
    res = await rt.pipeline.on_mesh_inbound(_topic_row("/dm bob@n psst", id="dm-1", kind="dm"))
    assert res.status == "queued" and res.destinations == 2
    await drain(rt)
    assert [(d["pubkey"], d["text"]) for d in rt.meshes["n"].dms] == [(BOB_N, "__cmh1:alice @ m: psst")]
    assert [(d["pubkey"], d["text"]) for d in rt.meshes["m"].dms] == [(ALICE, "DM to bob on n queued.")]


async def test_dm_typed_on_the_far_side_looks_on_the_near_mesh(make_runtime):
    rt = _runtime(make_runtime, [_room()])
    far = msg("/dm bob psst", gateway="to_n", chat="lobby", sender="carol", sender_id=CAROL, mid="to_n:n:9",
              native_id="far-9")
    await rt.pipeline.submit(far)
    await drain(rt)
    # n is the origin's own mesh, not a "far" one: bob is looked up on m only (no ambiguity)
    assert [(d["pubkey"], d["text"]) for d in rt.meshes["m"].dms] == [(BOB, "__cmh1:carol @ n: psst")]
    assert rt.meshes["n"].dms == []
    assert [o.text for o in rt.gateways["to_n"].sent] == ["DM to bob queued."]
