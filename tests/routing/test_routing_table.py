"""RouteConfig validation and RouteTable build / resolve."""

from __future__ import annotations

import pytest
from claudemesh_gateway import Address, ConfigError, Message
from claudemesh_gateway.routing.config import RouteConfig, parse_mesh_chat
from claudemesh_gateway.routing.table import RouteTable
from pydantic import ValidationError

from .conftest import FakeGateway, SendOnlyGateway

GWS = {"tg": FakeGateway("tg"), "sl": FakeGateway("sl"), "feed": SendOnlyGateway("feed")}
MESHES = {"m": None, "n": None}


def build(*routes):
    return RouteTable.build(list(routes), gateways=GWS, meshes=MESHES)


def m(text="hi", gateway="tg", chat="c1", *, tags=(), sender_id="u1", sender="Ann", thread=None):
    return Message(id="x", origin=Address(gateway, chat, thread), sender=sender, sender_id=sender_id, text=text,
                   tags=frozenset(tags))


def dest_keys(table, message):
    return sorted(d.address.key for d in table.resolve(message))


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError) as e:
        RouteConfig.model_validate({"name": "r", "mesh": "m", "topic": "t", "colour": "red"})
    assert "colour" in str(e.value)
    with pytest.raises(ValidationError):
        RouteConfig.model_validate({"name": "r", "topic": "t"})  # topic without mesh
    with pytest.raises(ValidationError):
        RouteConfig.model_validate({"name": "r", "mesh": "m", "topic": "t", "attribution": "{nick}: {text}"})
    with pytest.raises(ValidationError):
        RouteConfig.model_validate({"name": "r", "mesh": "m", "topic": "t", "attribution": "{sender}"})
    with pytest.raises(ValidationError):
        RouteConfig.model_validate({"name": "r", "binds": [{"gateway": "mesh", "chat": "m:nowhere"}]})
    ok = RouteConfig.model_validate({"name": "r", "mesh": "m", "topic": "#Ops", "tags": ["tag:Deploy"],
                                     "binds": [{"gateway": "tg", "chat": -100123, "thread": 7}]})
    assert ok.topic == "Ops" and ok.tags == ["deploy"]
    assert ok.binds[0].chat == "-100123" and ok.binds[0].thread == "7"


def test_mesh_chat_forms():
    assert parse_mesh_chat("m:#general").kind == "topic"
    assert parse_mesh_chat("m:tag:repo:billing").value == "repo:billing"
    assert parse_mesh_chat("m:@" + "AB" * 32).value == "ab" * 32
    assert parse_mesh_chat("m:@alice").value == "alice"


def test_build_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        build(
            {"name": "a", "mesh": "nope", "topic": "t", "binds": [{"gateway": "tg", "chat": "1"}]},
            {"name": "b", "mesh": "m", "topic": "t", "binds": [{"gateway": "ghost", "chat": "1"}]},
            {"name": "c", "mesh": "m", "topic": "t", "direction": "in",
             "binds": [{"gateway": "feed", "chat": "x"}]},
            {"name": "d", "binds": [{"gateway": "mesh", "chat": "m:tag:ops"}]},
            {"name": "a", "mesh": "m", "topic": "u", "binds": [{"gateway": "tg", "chat": "2",
                                                                "options": {"colour": 1}}]},
        )
    text = "\n".join(e.value.problems)
    assert "routes[0] (a).mesh: unknown mesh 'nope'" in text
    assert "unknown gateway 'ghost'" in text
    assert "gateway 'feed' (sendonly) cannot receive" in text
    assert "a tag address (m:tag:ops) can only be a destination" in text
    assert "duplicate route name 'a'" in text
    assert "options.colour: unknown key" in text


def test_build_rejects_a_route_that_only_returns_to_its_source():
    with pytest.raises(ConfigError) as e:
        build({"name": "solo", "mesh": "m", "topic": "t"})
    assert "back where it came from" in str(e.value) or "nothing can leave" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build({"name": "x", "mesh": "m", "topic": "t", "direction": "in",
               "binds": [{"gateway": "tg", "chat": "1", "direction": "out"}]})
    assert "no binding can receive" in str(e.value)


def test_encryption_conflict_between_routes():
    with pytest.raises(ConfigError) as e:
        build({"name": "a", "mesh": "m", "topic": "t", "encryption": "plaintext", "binds": [{"gateway": "tg", "chat": "1"}]},
              {"name": "b", "mesh": "m", "topic": "t", "encryption": "hkdf", "binds": [{"gateway": "sl", "chat": "2"}]})
    assert "conflicts" in str(e.value)
    t = build({"name": "a", "mesh": "m", "topic": "t", "encryption": "plaintext",
               "binds": [{"gateway": "tg", "chat": "1"}]})
    assert t.encryption_for("m", "t") == "plaintext"
    assert t.encryption_for("m", "#other") == "auto"  # the default
    assert t.topic_encryption() == {"m": {"t": "plaintext"}}


def test_route_encryption_reaches_mesh_configs():
    from claudemesh_gateway.mesh.config import TopicKeyConfig

    class Cfg:  # the parts of MeshConfig the table reads
        def __init__(self, topics, default="hkdf"):
            self.topics, self.default_encryption = topics, default

        def model_copy(self, update):
            return Cfg(update["topics"], self.default_encryption)

    meshes = {"m": Cfg({"t": TopicKeyConfig(epoch=2)}), "n": Cfg({}, default="plaintext")}
    routes = [{"name": "a", "mesh": "m", "topic": "t", "encryption": "plaintext",
               "binds": [{"gateway": "tg", "chat": "1"}]},
              {"name": "b", "mesh": "n", "topic": "u", "binds": [{"gateway": "tg", "chat": "2"}]}]
    t = RouteTable.build(routes, gateways=GWS, meshes=meshes)
    applied = t.apply_encryption(meshes)
    assert applied["m"].topics["t"].encryption == "plaintext" and applied["m"].topics["t"].epoch == 2
    assert t.encryption_for("n", "u") == "plaintext"  # not set on the route: the mesh default
    assert applied["n"] is meshes["n"]
    conflicting = {"m": Cfg({"t": TopicKeyConfig(encryption="hkdf")})}
    with pytest.raises(ConfigError) as e:
        RouteTable.build(routes[:1], gateways=GWS, meshes=conflicting)
    assert "mesh.m.topics.t.encryption" in str(e.value)


def test_directions():
    t = build(
        {"name": "out", "mesh": "m", "topic": "news", "direction": "out", "binds": [{"gateway": "tg", "chat": "1"}]},
        {"name": "in", "mesh": "m", "topic": "inbox", "direction": "in", "binds": [{"gateway": "tg", "chat": "2"}]},
        {"name": "both", "mesh": "m", "topic": "chat",
         "binds": [{"gateway": "tg", "chat": "3"}, {"gateway": "sl", "chat": "C3"},
                   {"gateway": "feed", "chat": "log", "direction": "out"}]},
    )
    news = Message(id="1", origin=Address("mesh", "m:#news"), sender="bob", text="x")
    assert dest_keys(t, news) == ["tg/1"]
    assert dest_keys(t, m(chat="1")) == []  # out-only route: chat 1 is not a source
    assert dest_keys(t, m(chat="2")) == ["mesh/m:#inbox"]
    inbox = Message(id="2", origin=Address("mesh", "m:#inbox"), sender="bob", text="x")
    assert dest_keys(t, inbox) == []  # in-only: the topic is not a source
    # both: the topic and the other bindings, never back to the origin (the pipeline removes it)
    assert dest_keys(t, m(chat="3")) == ["feed/log", "mesh/m:#chat", "sl/C3", "tg/3"]
    assert t.watched_topics() == {"m": {"news", "chat"}}
    assert t.watched_topics("m") == {"news", "chat"}
    assert t.watched_topics("n") == set()


def test_threads_match_only_their_thread():
    t = build({"name": "f", "mesh": "m", "topic": "t", "binds": [{"gateway": "tg", "chat": "1", "thread": "7"}]})
    assert dest_keys(t, m(chat="1", thread="7")) == ["mesh/m:#t", "tg/1/7"]
    assert dest_keys(t, m(chat="1", thread="8")) == []
    assert dest_keys(t, m(chat="1")) == []


def test_tag_routes_match_from_any_source_and_dedupe():
    t = build(
        {"name": "ops", "tags": ["ops"], "binds": [{"gateway": "sl", "chat": "C-ops", "direction": "out"},
                                                   {"gateway": "mesh", "chat": "m:tag:oncall", "direction": "out"}]},
        {"name": "chat", "mesh": "m", "topic": "chat", "binds": [{"gateway": "tg", "chat": "1"},
                                                                 {"gateway": "sl", "chat": "C-ops"}]},
    )
    assert dest_keys(t, m(chat="99", tags={"ops"})) == ["mesh/m:tag:oncall", "sl/C-ops"]
    assert dest_keys(t, m(chat="99")) == []
    both = t.resolve(m(chat="1", tags={"ops"}))
    keys = [d.address.key for d in both]
    assert len(keys) == len(set(keys))  # sl/C-ops once, though two routes lead there
    assert {d.route for d in both if d.address.key == "sl/C-ops"} == {"ops"}


def test_static_binding_tags():
    t = build(
        {"name": "src", "mesh": "m", "topic": "t", "binds": [{"gateway": "tg", "chat": "1", "tags": ["team-a"]}]},
        {"name": "team", "tags": ["team-a"], "binds": [{"gateway": "sl", "chat": "A", "direction": "out"}]},
    )
    assert t.static_tags(Address("tg", "1")) == {"team-a"}
    assert t.static_tags(Address("tg", "2")) == frozenset()


def test_allow_and_deny_lists():
    t = build(
        {"name": "r", "mesh": "m", "topic": "t", "deny": ["spammer"],
         "binds": [{"gateway": "tg", "chat": "1"}, {"gateway": "tg", "chat": "2", "allow": ["vip"]}],
         "mesh_allow": ["Bob", "a1" * 32]},
    )
    assert t.match(m(chat="1", sender_id="spammer")).denied == ("r",)
    assert dest_keys(t, m(chat="1", sender_id="anyone")) != []
    assert dest_keys(t, m(chat="2", sender_id="anyone")) == []
    assert dest_keys(t, m(chat="2", sender_id="vip")) != []
    mesh = Message(id="1", origin=Address("mesh", "m:#t"), sender="bob", sender_id="ff" * 32, text="x")
    assert dest_keys(t, mesh) != []  # allowed by name, case-insensitively
    stranger = Message(id="2", origin=Address("mesh", "m:#t"), sender="eve", sender_id="ee" * 32, text="x")
    assert dest_keys(t, stranger) == []
    by_key = Message(id="3", origin=Address("mesh", "m:#t"), sender="x", sender_id="a1" * 32, text="x")
    assert dest_keys(t, by_key) != []


def test_bindings_for_and_describe():
    t = build({"name": "r", "mesh": "m", "topic": "t", "allow": ["u1"],
               "binds": [{"gateway": "tg", "chat": "1", "options": {"flavour": "spicy"}}, {"gateway": "sl", "chat": "C"}]})
    (b,) = t.bindings_for("tg")
    assert b.route == "r" and b.address == Address("tg", "1") and b.inbound and b.outbound
    assert b.options.flavour == "spicy" and b.allow == ("u1",)
    d = t.describe()
    assert d[0]["name"] == "r" and d[0]["binds"][1] == {"gateway": "sl", "chat": "C", "thread": None,
                                                       "direction": "both", "tags": []}
    assert d[0]["encryption"] == "auto"  # the default


def test_from_settings_accepts_models_and_dicts():
    class S:
        routes = (RouteConfig(name="r", mesh="m", topic="t", binds=[{"gateway": "tg", "chat": "1"}]),)
        mesh = MESHES

    assert RouteTable.from_settings(S(), GWS).route("r") is not None


def test_inbound_dm_binding_by_pubkey_or_name():
    t = build({"name": "dm", "mesh": "m", "topic": "t", "direction": "in",
               "binds": [{"gateway": "mesh", "chat": "m:@alice", "direction": "in"},
                         {"gateway": "mesh", "chat": "m:@" + "B2" * 32, "direction": "in"}]})
    from_alice = Message(id="1", origin=Address("mesh", "m:@" + "a1" * 32), sender="Alice", sender_id="a1" * 32,
                         text="x")
    from_bob = Message(id="2", origin=Address("mesh", "m:@" + "b2" * 32), sender="bob", sender_id="b2" * 32,
                       text="x")
    from_eve = Message(id="3", origin=Address("mesh", "m:@" + "ee" * 32), sender="eve", sender_id="ee" * 32,
                       text="x")
    assert dest_keys(t, from_alice) == ["mesh/m:#t"]
    assert dest_keys(t, from_bob) == ["mesh/m:#t"]
    assert dest_keys(t, from_eve) == []
