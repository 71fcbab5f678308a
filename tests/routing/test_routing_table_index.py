"""RouteTable.match looks only at the routes indexed for a message's origin and tags: it must agree
with the full rules applied to every route (source bindings, source topic, tags; config order)."""

from __future__ import annotations

from claudemesh_gateway import Address, Message
from claudemesh_gateway.routing.table import RouteTable

from .conftest import FakeGateway

GWS = {"tg": FakeGateway("tg"), "sl": FakeGateway("sl")}
MESHES = {"m": None, "n": None}


def routes() -> list[dict]:
    out: list[dict] = []
    for i in range(120):
        out.append({"name": f"topic{i}", "mesh": "m", "topic": f"t{i % 40}", "direction": "both",
                    "binds": [{"gateway": "tg", "chat": f"c{i % 7}"}, {"gateway": "sl", "chat": f"C{i}"}]})
    out.append({"name": "tagged", "tags": ["oncall"], "direction": "out", "binds": [{"gateway": "sl", "chat": "P"}]})
    out.append({"name": "tagged2", "tags": ["oncall", "ops"], "direction": "out",
                "binds": [{"gateway": "tg", "chat": "p2"}]})
    out.append({"name": "dm", "mesh": "m", "topic": "inbox", "direction": "in",
                "binds": [{"gateway": "mesh", "chat": "m:@alice", "direction": "in"},
                          {"gateway": "mesh", "chat": "m:@" + "B2" * 32, "direction": "in"}]})
    out.append({"name": "thread", "mesh": "m", "topic": "th",
                "binds": [{"gateway": "tg", "chat": "c3", "thread": "9"}]})
    out.append({"name": "mirror", "mesh": "m", "topic": "t1", "direction": "out",
                "binds": [{"gateway": "mesh", "chat": "n:#far"}]})
    out.append({"name": "denied", "mesh": "m", "topic": "t2", "mesh_deny": ["eve"],
                "binds": [{"gateway": "sl", "chat": "D"}]})
    return out


def reference(table: RouteTable, message: Message) -> tuple[list[str], list[str], list[str], list[str]]:
    """(matched, denied, destination keys, sources) by the rules, over every route in config order."""
    origin = message.origin
    sender = message.sender if origin.gateway == "mesh" else ""
    topic = Address("mesh", origin.chat) if origin.gateway == "mesh" and ":#" in origin.chat else None
    matched, denied, keys, sources = [], [], [], []
    for r in table.routes:
        source = any(b.inbound and b.matches_origin(origin, sender) for b in r.binds) or (
            r.topic_is_source and topic is not None and r.topic_address == topic)
        if not source and not (r.tags & message.tags):
            continue
        if source:
            sources.append(r.name)
        matched.append(r.name)
        if not table.admits(r, message):
            denied.append(r.name)
            continue
        targets = ([r.topic_address] if r.topic_is_destination and r.topic_address is not None else [])
        targets += [b.address for b in r.binds if b.outbound]
        keys += [a.key for a in targets if a.key not in keys]
    return matched, denied, keys, sources


def messages() -> list[Message]:
    def mesh(chat: str, sender: str, sid: str = "a1" * 32, tags: tuple[str, ...] = ()) -> Message:
        return Message(id="x", origin=Address("mesh", chat), sender=sender, sender_id=sid, text="x",
                       tags=frozenset(tags))

    return [
        Message(id="1", origin=Address("tg", "c3"), sender="Ann", sender_id="u1", text="x"),
        Message(id="2", origin=Address("tg", "c3", "9"), sender="Ann", sender_id="u1", text="x"),
        Message(id="3", origin=Address("tg", "c5"), sender="Ann", sender_id="u1", text="x",
                tags=frozenset({"oncall"})),
        Message(id="4", origin=Address("sl", "C77"), sender="Bo", sender_id="u2", text="x"),
        Message(id="5", origin=Address("sl", "nowhere"), sender="Bo", sender_id="u2", text="x",
                tags=frozenset({"ops", "zzz"})),
        mesh("m:#t1", "alice"), mesh("m:#t2", "eve", "ee" * 32), mesh("m:#t39", "bob", tags=("oncall",)),
        mesh("m:@" + "a1" * 32, "Alice"), mesh("m:@" + "b2" * 32, "bob", "b2" * 32), mesh("m:@" + "ee" * 32, "eve"),
        mesh("n:#far", "carol"), mesh("m:#unrouted", "alice"),
    ]


def test_match_agrees_with_the_rules_over_every_route():
    table = RouteTable.build(routes(), gateways=GWS, meshes=MESHES)
    for message in messages():
        res = table.match(message)
        matched, denied, keys, sources = reference(table, message)
        assert list(res.matched) == matched, message.origin
        assert list(res.denied) == denied, message.origin
        assert [d.address.key for d in res.destinations] == keys, message.origin
        assert list(res.sources) == sources, message.origin
    assert table.match(messages()[0]).matched  # the fixture exercises real matches
    assert table.match(messages()[6]).denied == ("denied",)


def test_static_tags_only_from_bindings_with_tags():
    table = RouteTable.build([
        {"name": "a", "mesh": "m", "topic": "t", "binds": [{"gateway": "tg", "chat": "c1", "tags": ["ops"]}]},
        {"name": "b", "mesh": "m", "topic": "u", "binds": [{"gateway": "tg", "chat": "c1"},
                                                          {"gateway": "sl", "chat": "C", "tags": ["x"]}]},
    ], gateways=GWS, meshes=MESHES)
    assert table.static_tags(Address("tg", "c1")) == frozenset({"ops"})
    assert table.static_tags(Address("sl", "C")) == frozenset({"x"})
    assert table.static_tags(Address("sl", "other")) == frozenset()
