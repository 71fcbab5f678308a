"""Pipeline.submit / on_mesh_inbound and the delivery transport, against a real SqliteStore and fakes."""

from __future__ import annotations

import dataclasses
import re

import pytest
from claudemesh_gateway import Address, Attachment, DeliveryError, hookimpl
from claudemesh_gateway.delivery.text import ZWSP
from claudemesh_gateway.mesh.types import MeshInbound, Peer
from claudemesh_gateway.routing.commands import HELP_TEXT, parse_command

from .conftest import (
    ALICE,
    BOB,
    CAROL,
    GATEWAY_PK,
    FakeGateway,
    FakePeer,
    HtmlGateway,
    StrictGateway,
    drain,
    msg,
)

ROOM = {"name": "room", "mesh": "m", "topic": "general",
        "binds": [{"gateway": "tg", "chat": "c1"}, {"gateway": "sl", "chat": "C1"}]}


def inbound(text, *, id="tm-1", sender=ALICE, name="alice", topic="general", kind="topic", **kw):
    return MeshInbound(kind=kind, mesh="m", mesh_id="mesh-id", id=id, text=text, sender_pubkey=sender,
                       sender_name=name, topic=topic if kind == "topic" else None, created_at=1_700_000_000_000, **kw)


async def test_platform_message_reaches_topic_and_other_chat_with_attribution(make_runtime):
    rt = make_runtime([ROOM])
    res = await rt.pipeline.submit(msg("hello there", chat="c1", mid="tg:1", native_id="501"))
    assert res.status == "queued" and res.destinations == 2
    assert rt.kicks == 1
    await drain(rt)
    peer = rt.meshes["m"]
    assert [p["text"] for p in peer.posts] == ["[via tg] Ann: hello there"]
    assert [o.text for o in rt.gateways["sl"].sent] == ["Ann: hello there"]
    assert rt.gateways["tg"].sent == []  # never back to the origin
    names = [e.name for e in rt.events]
    assert names.count("message-received") == 1 and names.count("message-queued") == 2


async def test_duplicates_are_recognised(make_runtime):
    rt = make_runtime([ROOM])
    m1 = msg("once", chat="c1", mid="tg:dup")
    assert (await rt.pipeline.submit(m1)).status == "queued"
    again = await rt.pipeline.submit(m1)
    assert again.status == "duplicate"
    await drain(rt)
    assert len(rt.meshes["m"].posts) == 1


async def test_mesh_topic_post_goes_out_with_hop_and_reply_mapping(make_runtime):
    rt = make_runtime([ROOM])
    # a Telegram message first, delivered to the topic as tm1
    await rt.pipeline.submit(msg("question?", chat="c1", mid="tg:q", native_id="900"))
    await drain(rt)
    topic_id = rt.meshes["m"].posts[0]["id"]
    # a mesh peer answers it in the topic
    res = await rt.pipeline.on_mesh_inbound(inbound("answer", id="row-7", reply_to_id=topic_id))
    assert res.status == "queued"
    await drain(rt)
    (tg_out,) = rt.gateways["tg"].sent
    assert tg_out.text == "alice: answer"
    assert tg_out.reply_to == "900"  # mapped back to the Telegram original
    sl_answer = next(o for o in rt.gateways["sl"].sent if o.message.id == "mesh:m:row-7")
    sl_question = (await rt.store.map_get("tg:q", "sl/C1"))[0]
    assert sl_answer.reply_to == sl_question  # the Slack copy answers the Slack copy
    # and a Telegram reply to the relayed answer reaches the topic as a reply to row-7
    await rt.pipeline.submit(msg("thanks", chat="c1", mid="tg:t", native_id="901", reply_to=next(
        iter(await rt.store.map_get("mesh:m:row-7", "tg/c1")))))
    await drain(rt)
    assert rt.meshes["m"].posts[-1]["reply_to_id"] == "row-7"


async def test_own_echo_and_via_marker_are_loops(make_runtime):
    rt = make_runtime([ROOM])
    own = await rt.pipeline.on_mesh_inbound(inbound("mine", id="r1", sender=GATEWAY_PK))
    assert own.status == "dropped" and own.reason == "loop"
    via = await rt.pipeline.on_mesh_inbound(inbound("[via tg] Bob: hi", id="r2"))
    assert via.status == "queued" and via.destinations == 1  # slack only: it came from tg
    await drain(rt)
    assert rt.gateways["tg"].sent == []
    assert [o.text for o in rt.gateways["sl"].sent] == ["[via tg] alice: Bob: hi"]


async def test_hop_limit_for_mesh_to_mesh(make_runtime):
    peers = {"m": FakePeer("m"), "n": FakePeer("n")}
    bridge = {"name": "bridge", "mesh": "m", "topic": "general", "direction": "out",
              "binds": [{"gateway": "mesh", "chat": "n:#mirror"}, {"gateway": "tg", "chat": "c1"}]}
    rt = make_runtime([bridge], meshes=peers)
    r0 = await rt.pipeline.on_mesh_inbound(inbound("fresh", id="h0"))
    r1 = await rt.pipeline.on_mesh_inbound(inbound("__cmh1:once relayed", id="h1"))
    r2 = await rt.pipeline.on_mesh_inbound(inbound("__cmh2:twice relayed", id="h2"))
    assert (r0.destinations, r1.destinations, r2.destinations) == (2, 2, 1)  # h2: platform only
    await drain(rt)
    assert [p["text"] for p in peers["n"].posts] == ["__cmh1:alice: fresh", "__cmh2:alice: once relayed"]
    assert [o.text for o in rt.gateways["tg"].sent] == ["alice: fresh", "alice: once relayed", "alice: twice relayed"]
    r3 = await rt.pipeline.on_mesh_inbound(inbound("__cmh2:x", id="h3"))
    assert r3.destinations == 1


async def test_every_part_into_another_mesh_carries_the_loop_marker(make_runtime):
    """A split relay must not let parts 2..n slip past another bridge's hop limit."""
    peers = {"m": FakePeer("m"), "n": FakePeer("n")}
    bridge = {"name": "bridge", "mesh": "m", "topic": "general", "direction": "out",
              "binds": [{"gateway": "mesh", "chat": "n:#mirror"}]}
    rt = make_runtime([bridge], meshes=peers)
    words = [f"w{i}" for i in range(5000)]
    await rt.pipeline.on_mesh_inbound(inbound("__cmh1:" + " ".join(words), id="big"))
    await drain(rt)
    posts = [p["text"] for p in peers["n"].posts]
    assert len(posts) >= 4
    assert all(p.startswith("__cmh2:") for p in posts), [p[:20] for p in posts]
    assert all(len(p) <= 8000 for p in posts)
    bodies = [re.sub(r" \(\d+/\d+\)$", "", p[len("__cmh2:"):]) for p in posts]
    assert bodies[0].startswith("alice: ")
    assert " ".join(bodies)[len("alice: "):].split() == words  # nothing lost, in order


async def test_hop_limit_alone_drops_with_reason(make_runtime):
    peers = {"m": FakePeer("m"), "n": FakePeer("n")}
    rt = make_runtime([{"name": "b", "mesh": "m", "topic": "general", "direction": "out",
                        "binds": [{"gateway": "mesh", "chat": "n:#mirror"}]}], meshes=peers)
    res = await rt.pipeline.on_mesh_inbound(inbound("__cmh2:x", id="h9"))
    assert (res.status, res.reason) == ("dropped", "hop_limit")
    assert "hop_limit" in rt.drops()


async def test_tags_are_stripped_and_route(make_runtime):
    peer = FakePeer("m", roster=[
        Peer(pubkey=BOB, display_name="bob", groups=("repo:billing",)),
        Peer(pubkey=CAROL, display_name="carol", groups=("frontend",)),
        Peer(pubkey=ALICE, display_name="alice", profile={"tags": ["repo:billing"]}),
        Peer(pubkey=GATEWAY_PK, display_name="gw", groups=("repo:billing",), is_self=True),
    ])
    tag_route = {"name": "billing", "tags": ["repo:billing"],
                 "binds": [{"gateway": "mesh", "chat": "m:tag:repo:billing", "direction": "out"},
                           {"gateway": "sl", "chat": "C-billing", "direction": "out"}]}
    rt = make_runtime([ROOM, tag_route], meshes={"m": peer})
    res = await rt.pipeline.submit(msg("tag:repo:billing deployed v2", chat="c1", mid="tg:tag"))
    assert res.destinations == 4  # topic, slack room chat, tag fan-out, slack billing
    await drain(rt)
    assert sorted(d["pubkey"] for d in peer.dms) == sorted([ALICE, BOB])  # never ourselves, never carol
    assert all(d["text"] == "[via tg] Ann: deployed v2" for d in peer.dms)
    assert peer.posts[0]["text"] == "[via tg] Ann: deployed v2"
    billing = [o for o in rt.gateways["sl"].sent if o.to.chat == "C-billing"]
    assert billing[0].text == "Ann: deployed v2" and "repo:billing" in billing[0].message.tags


async def test_mesh_dm_with_tag_reaches_tagged_peers(make_runtime):
    peer = FakePeer("m", roster=[Peer(pubkey=BOB, display_name="bob", groups=("ops",))])
    rt = make_runtime([{"name": "ops", "tags": ["ops"],
                        "binds": [{"gateway": "mesh", "chat": "m:tag:ops", "direction": "out"}]}],
                      meshes={"m": peer})
    peer.roster.append(Peer(pubkey=ALICE, display_name="alice", groups=("ops",)))  # the sender herself
    res = await rt.pipeline.on_mesh_inbound(inbound("tag:ops disk full", id="dm1", kind="dm"))
    assert res.status == "queued"
    await drain(rt)
    assert peer.dms == [{"pubkey": BOB, "text": "__cmh1:alice: disk full", "cmid": peer.dms[0]["cmid"]}]


async def test_denied_sender_and_no_route(make_runtime):
    rt = make_runtime([{**ROOM, "deny": ["u666"]}])
    assert (await rt.pipeline.submit(msg("x", chat="c1", sender_id="u666", mid="a"))).reason == "denied"
    assert (await rt.pipeline.submit(msg("x", chat="elsewhere", mid="b"))).reason == "no_route"
    # the dropped id is in the ledger: a redelivery is a duplicate, not a second drop
    assert (await rt.pipeline.submit(msg("x", chat="elsewhere", mid="b"))).status == "duplicate"


async def test_allow_message_hook_vetoes_and_destinations_hook_adds(make_runtime):
    class Veto:
        @hookimpl
        def allow_message(self, message):
            return False if "spam" in message.text else None

    class Extra:
        @hookimpl
        async def message_destinations(self, message):
            return [Address("sl", "C-audit"), Address("nowhere", "x")]

    rt = make_runtime([ROOM], plugins=[("veto", Veto()), ("extra", Extra())])
    assert (await rt.pipeline.submit(msg("buy spam", chat="c1", mid="s"))).reason == "denied"
    res = await rt.pipeline.submit(msg("fine", chat="c1", mid="f"))
    assert res.destinations == 3
    await drain(rt)
    assert {o.to.chat for o in rt.gateways["sl"].sent} == {"C1", "C-audit"}


async def test_mass_mentions_neutralised_unless_allowed(make_runtime):
    gws = {"tg": FakeGateway("tg"), "sl": FakeGateway("sl"), "st": StrictGateway("st")}
    rt = make_runtime([ROOM, {"name": "loud", "mesh": "m", "topic": "loud", "allow_mass_mentions": True,
                              "binds": [{"gateway": "sl", "chat": "C-loud"}, {"gateway": "st", "chat": "S"}]}],
                      gateways=gws)
    await rt.pipeline.on_mesh_inbound(inbound("@everyone <!channel> look", id="mm1"))
    await rt.pipeline.on_mesh_inbound(inbound("@everyone look", id="mm2", topic="loud"))
    await drain(rt)
    by_chat = {o.to.chat: o for o in rt.gateways["sl"].sent}
    assert by_chat["C1"].text == f"alice: @{ZWSP}everyone <!{ZWSP}channel> look"
    assert by_chat["C1"].options.get("allow_mass_mentions") is None
    assert by_chat["C-loud"].text == "alice: @everyone look"
    assert by_chat["C-loud"].options.get("allow_mass_mentions") is True  # its options model has the switch
    (strict,) = rt.gateways["st"].sent
    assert strict.text == "alice: @everyone look" and "allow_mass_mentions" not in strict.options


async def test_custom_attribution_template(make_runtime):
    rt = make_runtime([{**ROOM, "attribution": "[{mesh}#{topic}] <{sender}> {text}"}])
    await rt.pipeline.on_mesh_inbound(inbound("hi", id="at1"))
    await drain(rt)
    assert rt.gateways["tg"].sent[0].text == "[m#general] <alice> hi"


async def test_long_message_split_for_gateway_limit(make_runtime):
    rt = make_runtime([ROOM])
    body = "\n".join(f"line {i} " + "x" * 30 for i in range(40))
    await rt.pipeline.on_mesh_inbound(inbound("```\n" + body + "\n```", id="long"))
    await drain(rt)
    parts = [o for o in rt.gateways["tg"].sent]
    assert len(parts) > 3 and all(len(o.text) <= 400 for o in parts)
    assert [o.part for o in parts] == list(range(1, len(parts) + 1))
    assert all(o.parts == len(parts) for o in parts)
    assert all(o.text.count("```") % 2 == 0 for o in parts)
    ids = await rt.store.map_get("mesh:m:long", "tg/c1")
    assert len(ids) == len(parts)


async def test_escaping_gateway_parts_stay_within_limit(make_runtime):
    rt = make_runtime([{"name": "r", "mesh": "m", "topic": "general", "direction": "out",
                        "binds": [{"gateway": "h", "chat": "1"}]}], gateways={"h": HtmlGateway("h")})
    await rt.pipeline.on_mesh_inbound(inbound("<b>" * 60, id="esc"))
    await drain(rt)
    sent = rt.gateways["h"].sent
    assert sent and all(len(o.text) <= 100 for o in sent)
    unnumbered = "".join(re.sub(r" \(\d+/\d+\)$", "", o.text) for o in sent)
    assert unnumbered.replace(" ", "") == ("alice:" + "&lt;b&gt;" * 60)  # nothing lost, all escaped


async def test_attachments_described_for_text_only_destinations(make_runtime):
    rt = make_runtime([ROOM])
    m1 = dataclasses.replace(msg("see file", chat="c1", mid="att"), attachments=(
        Attachment(name="report.pdf", content_type="application/pdf", size=4096, url="https://secret/x"),))
    await rt.pipeline.submit(m1)
    await drain(rt)
    post = rt.meshes["m"].posts[0]["text"]
    assert post == "[via tg] Ann: see file\n[application report.pdf, 4 KiB]"
    assert "secret" not in post


async def test_commands_reply_to_origin(make_runtime):
    peer = FakePeer("m", roster=[Peer(pubkey=BOB, display_name="bob", status="idle")])
    rt = make_runtime([ROOM], meshes={"m": peer})
    rt.states["m"] = ("connected", "", 0.0)
    assert (await rt.pipeline.submit(msg("/help", chat="c1", mid="h", native_id="77"))).destinations == 1
    await rt.pipeline.submit(msg("/peers@MyBot", chat="c1", mid="p"))
    await rt.pipeline.submit(msg("/topics", chat="c1", mid="t"))
    await rt.pipeline.submit(msg("/status", chat="c1", mid="st"))
    await rt.pipeline.submit(msg("/dm bob are you there?", chat="c1", mid="d"))
    await rt.pipeline.submit(msg("/dm nobody hi", chat="c1", mid="d2"))
    await drain(rt)
    replies = [o.text for o in rt.gateways["tg"].sent]
    assert replies[0] == HELP_TEXT and rt.gateways["tg"].sent[0].reply_to == "77"
    assert replies[1] == "m: bob (idle)"
    assert "room: m:#general" in replies[2]
    assert "queued: " in replies[3] and "mesh m: connected" in replies[3]
    assert replies[4] == "DM to bob queued."
    assert replies[5].startswith("No peer named 'nobody'")
    assert peer.dms == [{"pubkey": BOB, "text": "[via tg] Ann: are you there?", "cmid": peer.dms[0]["cmid"]}]
    assert peer.posts == [] and rt.gateways["sl"].sent == []  # commands are not relayed


async def test_commands_from_unbound_or_denied_chats_are_not_answered(make_runtime):
    rt = make_runtime([{**ROOM, "deny": ["bad"]}])
    assert (await rt.pipeline.submit(msg("/peers", chat="stranger", mid="x1"))).reason == "no_route"
    assert (await rt.pipeline.submit(msg("/peers", chat="c1", sender_id="bad", mid="x2"))).reason == "denied"
    assert parse_command("/unknown thing") is None
    # an unknown slash text is an ordinary message
    assert (await rt.pipeline.submit(msg("/shrug", chat="c1", mid="x3"))).destinations == 2


async def test_transient_failure_propagates_and_permanent_failure_notifies_sender(make_runtime):
    rt = make_runtime([{**ROOM, "notify_failures": True}])
    rt.gateways["tg"].fail = DeliveryError("HTTP 403 (rejected)", permanent=True)
    await rt.pipeline.on_mesh_inbound(inbound("will fail", id="f1"))
    item = await rt.store.head("tg/c1")
    outs, limits = await rt.pipeline.render(item)
    with pytest.raises(DeliveryError):
        await rt.pipeline.send(outs[0])
    await rt.pipeline.failed(item, "HTTP 403 (rejected)", False)  # transient attempts notify nobody
    assert await rt.store.head(f"mesh/m:@{ALICE}") is None
    await rt.pipeline.failed(item, "HTTP 403 (rejected)", True)
    await rt.pipeline.failed(item, "HTTP 403 (rejected)", True)  # once per message and destination
    notice = await rt.store.head(f"mesh/m:@{ALICE}")
    assert notice is not None
    outs, limits = await rt.pipeline.render(notice)
    assert outs[0].text.startswith('claudemesh-gateway could not deliver your message "will fail" to tg/c1')
    assert limits[0].scope == "mesh:m:member" and limits[0].burst == 10


async def test_mesh_destination_rate_limit_and_idempotent_client_ids(make_runtime):
    rt = make_runtime([ROOM])
    await rt.pipeline.submit(msg("hi", chat="c1", mid="rl"))
    item = await rt.store.head("mesh/m:#general")
    outs1, limits = await rt.pipeline.render(item)
    outs2, _ = await rt.pipeline.render(item)
    assert [lim.scope for lim in limits] == ["mesh:m:member"] and limits[0].per_second == 1.0
    assert outs1[0].idempotency_key == outs2[0].idempotency_key
    await rt.pipeline.send(outs1[0])
    await rt.pipeline.send(outs2[0])
    cmids = [p["cmid"] for p in rt.meshes["m"].posts]
    assert cmids[0] == cmids[1]  # a retried part carries the same client_message_id


async def test_unknown_gateway_in_outbox_is_permanent(make_runtime):
    rt = make_runtime([ROOM])
    await rt.pipeline.submit(msg("hi", chat="c1", mid="gone"))
    del rt.gateways["sl"]
    item = await rt.store.head("sl/C1")
    with pytest.raises(DeliveryError) as e:
        await rt.pipeline.render(item)
    assert e.value.permanent


async def test_edits_map_to_native_ids_or_fall_back(make_runtime):
    rt = make_runtime([ROOM])
    await rt.pipeline.submit(msg("v1", chat="c1", mid="e1", native_id="300"))
    await drain(rt)
    await rt.pipeline.submit(msg("v2", chat="c1", mid="e2", native_id="300", edit_of="300"))
    await drain(rt)
    sl = rt.gateways["sl"].sent
    assert sl[1].edit_of == (await rt.store.map_get("e1", "sl/C1"))[0]
    assert sl[1].text == "Ann: v2"  # an edit in place is not marked
    # the mesh has no edits: the edit goes as a new, marked post
    assert rt.meshes["m"].posts[1]["text"] == "[via tg] (edited) Ann: v2"



def test_own_identities_reads_the_mesh_peer_shape():
    from types import SimpleNamespace

    from claudemesh_gateway.routing.pipeline import own_identities

    peer = SimpleNamespace(own_keys=frozenset({"AA" * 32, "bb" * 32}), cfg=SimpleNamespace(member_id="Mem-1"),
                           session_pubkey=None)
    assert own_identities(peer) == {"aa" * 32, "bb" * 32, "mem-1"}


async def test_echo_by_member_id_is_a_loop(make_runtime):
    rt = make_runtime([ROOM])
    res = await rt.pipeline.on_mesh_inbound(inbound("mine", id="r9", sender="77" * 32,
                                                    sender_member_id="member-gw"))
    assert (res.status, res.reason) == ("dropped", "loop")


async def test_route_max_hops_overrides_the_default(make_runtime):
    peers = {"m": FakePeer("m"), "n": FakePeer("n")}
    rt = make_runtime([{"name": "b", "mesh": "m", "topic": "general", "direction": "out", "max_hops": 1,
                        "binds": [{"gateway": "mesh", "chat": "n:#mirror"}]}], meshes=peers)
    assert (await rt.pipeline.on_mesh_inbound(inbound("fresh", id="mh0"))).destinations == 1
    res = await rt.pipeline.on_mesh_inbound(inbound("__cmh1:relayed", id="mh1"))
    assert (res.status, res.reason) == ("dropped", "hop_limit")


class FakeKeyRing:
    def __init__(self, modes):
        self.modes, self.added = dict(modes), []

    def mode(self, mesh, topic_id, topic_name=None):
        return self.modes.get(topic_name, "hkdf")

    def add_mesh(self, name, cfg):
        self.added.append(name)
        self.modes.update({t: tc.encryption for t, tc in cfg.topics.items()})


async def test_route_encryption_is_applied_to_the_key_ring_before_posting(make_runtime):
    from types import SimpleNamespace

    peer = FakePeer("m")
    peer.keyring = FakeKeyRing({})
    peer.cfg = SimpleNamespace(topics={}, model_copy=lambda update: SimpleNamespace(**update))
    rt = make_runtime([{**ROOM, "encryption": "plaintext"}], meshes={"m": peer})
    await rt.pipeline.submit(msg("in the clear", chat="c1", mid="pt"))
    await drain(rt)
    assert peer.keyring.added == ["m"] and peer.keyring.modes["general"] == "plaintext"
    assert [p["text"] for p in peer.posts] == ["[via tg] Ann: in the clear"]


async def test_posting_in_another_mode_than_the_route_says_is_refused(make_runtime):
    peer = FakePeer("m")
    peer.keyring = FakeKeyRing({"general": "hkdf"})  # no cfg: the ring cannot be corrected
    rt = make_runtime([{**ROOM, "encryption": "plaintext"}], meshes={"m": peer})
    await rt.pipeline.submit(msg("secret?", chat="c1", mid="pt2"))
    item = await rt.store.head("mesh/m:#general")
    outs, _ = await rt.pipeline.render(item)
    with pytest.raises(DeliveryError) as e:
        await rt.pipeline.send(outs[0])
    assert e.value.permanent and peer.posts == []


async def test_commands_from_mesh_dms_only(make_runtime):
    peer = FakePeer("m", roster=[Peer(pubkey=BOB, display_name="bob")])
    rt = make_runtime([ROOM], meshes={"m": peer})
    res = await rt.pipeline.on_mesh_inbound(inbound("/dm bob psst", id="c-dm", kind="dm"))
    assert res.status == "queued" and res.destinations == 2  # the reply to alice + the DM to bob
    await drain(rt)
    assert sorted((d["pubkey"], d["text"]) for d in peer.dms) == sorted([
        (ALICE, "DM to bob queued."), (BOB, "__cmh1:alice: psst")])
    # a broadcast or a topic row that looks like a command is just a message
    assert (await rt.pipeline.on_mesh_inbound(inbound("/help", id="c-bc", kind="broadcast"))).reason == "no_route"
    topic = await rt.pipeline.on_mesh_inbound(inbound("/help", id="c-topic"))
    assert topic.destinations == 2


async def test_admin_test_message_reaches_every_destination_of_a_route(make_runtime):
    rt = make_runtime([ROOM])
    result = await rt.pipeline.send_test_message("room", "ping", actor="ops@example")
    assert result["status"] == "queued" and sorted(result["destinations"]) == ["mesh/m:#general", "sl/C1", "tg/c1"]
    await drain(rt)
    assert rt.gateways["tg"].sent[0].text == "claudemesh-gateway test: ping"
    assert rt.meshes["m"].posts[0]["text"] == "[via admin] claudemesh-gateway test: ping"
    with pytest.raises(LookupError):
        await rt.pipeline.send_test_message("nope", "x")


async def test_tag_fanout_recipients_are_fixed_at_the_first_attempt(make_runtime):
    peer = FakePeer("m", roster=[Peer(pubkey=BOB, display_name="bob", groups=("ops",))])
    rt = make_runtime([{"name": "ops", "tags": ["ops"], "binds": [
        {"gateway": "mesh", "chat": "m:tag:ops", "direction": "out"}, {"gateway": "tg", "chat": "c1",
                                                                       "direction": "in"}]}],
                      meshes={"m": peer})
    await rt.pipeline.submit(msg("tag:ops restart", chat="c1", mid="fx"))
    item = await rt.store.head("mesh/m:tag:ops")
    first, _ = await rt.pipeline.render(item)
    peer.roster.insert(0, Peer(pubkey=ALICE, display_name="alice", groups=("ops",)))  # joins mid-retry
    again, _ = await rt.pipeline.render(item)
    assert [o.to for o in first] == [o.to for o in again] == [Address("mesh", f"m:@{BOB}")]
    await rt.pipeline.delivered(item, [])
    assert await rt.store.kv_get("routing", f"fanout:{item.id}") is None
    fresh, _ = await rt.pipeline.render(item)  # a new delivery (e.g. after dlq retry) resolves again
    assert sorted(o.to.chat for o in fresh) == sorted([f"m:@{ALICE}", f"m:@{BOB}"])


async def test_upstream_via_markers_match_gateway_kinds_case_insensitively(make_runtime):
    gws = {"tg_ops": FakeGateway("tg_ops"), "sl": FakeGateway("sl")}
    rt = make_runtime([{"name": "r", "mesh": "m", "topic": "general", "direction": "out",
                        "binds": [{"gateway": "tg_ops", "chat": "1"}, {"gateway": "sl", "chat": "2"}]}],
                      gateways=gws)
    # the broker's own Telegram bridge writes "[via Telegram]"; our tg_ops instance is of kind "fake"
    res = await rt.pipeline.on_mesh_inbound(inbound("[via FAKE] bob: hi", id="v1"))
    assert (res.status, res.reason) == ("dropped", "loop")
    res = await rt.pipeline.on_mesh_inbound(inbound("[via TG_OPS] bob: hi", id="v2"))
    assert res.destinations == 1


class BridgeLike(FakeGateway):
    """A gateway whose chats lie on another mesh (Gateway.mesh_of), like the mesh-to-mesh bridge."""

    kind = "bridgelike"

    def mesh_of(self, address):
        return "far"


async def test_bridge_gateway_addresses_get_mesh_loop_rules(make_runtime):
    gws = {"br": BridgeLike("br"), "tg": FakeGateway("tg")}
    rt = make_runtime([{"name": "b", "mesh": "m", "topic": "general",
                        "binds": [{"gateway": "br", "chat": "far:#x"}, {"gateway": "tg", "chat": "c1"}]}],
                      gateways=gws)
    await rt.pipeline.on_mesh_inbound(inbound("hello", id="b0"))
    hop2 = await rt.pipeline.on_mesh_inbound(inbound("__cmh2:again", id="b1"))
    assert hop2.destinations == 1  # the bridge destination is hop-limited like a mesh
    await rt.pipeline.submit(msg("from tg", chat="c1", mid="b2"))
    await drain(rt)
    assert [o.text for o in rt.gateways["br"].sent] == ["__cmh1:alice: hello", "[via tg] Ann: from tg"]
