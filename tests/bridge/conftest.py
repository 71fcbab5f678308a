"""Fixtures for the bridge tests: real dev brokers, three meshes, the whole app, real mesh members.

- broker ``b1`` holds mesh A (its seeded ``dev`` mesh: gateway/alice/bob, topic ``general``) and
  mesh C (created here: gateway/carol, topic ``lobby``);
- broker ``b2`` (a SECOND DevBroker) holds mesh B (its own seeded ``dev`` mesh, plus a topic
  ``lobby`` that alice and bob joined).

Mesh tables: ``a``/``b``/``c`` are the gateway's identities; ``a_alice``, ``b_bob``, ``c_carol``
are demo members (``Net.member``). ``Net.rows`` reads a topic straight from the broker's storage
and decrypts it with that mesh's key ring (the way any member would).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway.devbroker import DevBroker, DevBrokerConfig
from claudemesh_gateway.keys import KeyRing
from claudemesh_gateway.mesh import MeshPeer
from claudemesh_gateway.mesh.config import MeshConfig
from claudemesh_gateway.testing import build_test_app, mesh_member, wait_until

FAST = {
    "topic_poll_interval": 0.1, "topic_poll_idle_interval": 0.3, "roster_refresh": 0.5,
    "backoff": [0.1, 0.2, 0.4], "backoff_jitter": 0.0, "request_timeout": 3.0, "hello_timeout": 3.0,
    "ack_timeout": 3.0,
    # a bridge between gateways: these tests are about bodyVersion 3 re-sealed under each mesh's
    # HKDF key, the explicit choice for topics shared only by gateways and agents that speak it
    "default_encryption": "hkdf",
}
DELIVERY = {"backoff_base": 0.1, "backoff_cap": 0.4, "poll_interval": 0.3, "max_attempts": 500}




def _broker_cfg() -> DevBrokerConfig:
    return DevBrokerConfig(persist_debounce_s=0.01, close_timeout_s=1.0)


class Net:
    """Two dev brokers, three meshes, identities, and helpers to read what reached each topic."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.b1 = DevBroker(root / "b1", config=_broker_cfg())
        self.b2 = DevBroker(root / "b2", config=_broker_cfg())
        self.tables: dict[str, dict[str, Any]] = {}
        self.topic_ids: dict[tuple[str, str], str] = {}
        self.peers: list[MeshPeer] = []
        self._n = itertools.count(1)

    async def start(self) -> None:
        await self.b1.start()
        await self.b2.start()
        for b in (self.b1, self.b2):
            b.set_rate_limit(10_000, 600_000)
        t1, t2 = self.b1.mesh_tables(), self.b2.mesh_tables()
        self.tables["a"], self.tables["a_alice"], self.tables["a_bob"] = t1["dev"], t1["dev_alice"], t1["dev_bob"]
        self.tables["b"], self.tables["b_alice"], self.tables["b_bob"] = t2["dev"], t2["dev_alice"], t2["dev_bob"]
        seed1, seed2 = self.b1.default_mesh, self.b2.default_mesh
        self.topic_ids[("a", "general")] = seed1.general_topic_id
        lobby = self.b2.create_topic(seed2.mesh_id, "lobby", seed2.gateway.member_id, encrypted=False)
        for m in (seed2.alice, seed2.bob):
            self.b2.join_topic(seed2.mesh_id, lobby.topic_id, m.member_id)
        self.topic_ids[("b", "lobby")] = lobby.topic_id
        # mesh C on the first broker
        info = self.b1.create_mesh("c", name="c")
        gw = self.b1.add_member(info.mesh_id, "gateway")
        carol = self.b1.add_member(info.mesh_id, "carol")
        topic = self.b1.create_topic(info.mesh_id, "lobby", gw.member_id, encrypted=False)
        self.b1.join_topic(info.mesh_id, topic.topic_id, carol.member_id)
        self.topic_ids[("c", "lobby")] = topic.topic_id
        for name, member in (("c", gw), ("c_carol", carol)):
            self.tables[name] = {
                "broker_url": self.b1.ws_url, "mesh_id": info.mesh_id, "member_id": member.member_id,
                "secret_key": member.secret_hex, "root_key": info.root_key_b64url, "display_name": member.display_name,
            }

    def broker_of(self, mesh: str) -> DevBroker:
        return self.b2 if mesh.startswith("b") else self.b1

    def identity(self, mesh: str, display_name: str) -> dict[str, Any]:
        """A new member of mesh ``mesh`` (a/b/c), joined to that mesh's bridged topic; its table."""
        broker, base = self.broker_of(mesh), self.tables[mesh]
        member = broker.add_member(base["mesh_id"], display_name)
        topic = "general" if mesh == "a" else "lobby"
        broker.join_topic(base["mesh_id"], self.topic_ids[(mesh, topic)], member.member_id)
        return {**base, "member_id": member.member_id, "secret_key": member.secret_hex, "display_name": display_name}

    async def restart_b2(self) -> None:
        port = self.b2.port
        self.b2 = DevBroker(self.root / "b2", port=port or 0, config=_broker_cfg())
        await self.b2.start()
        self.b2.set_rate_limit(10_000, 600_000)

    async def member(self, table: str, on_message: Any = None, groups: tuple[str, ...] = ()) -> MeshPeer:
        """A connected member with the identity of ``table`` (stopped by :meth:`stop`)."""
        peer = await mesh_member(None, table, mesh=self.tables[table], options=FAST, groups=groups,
                                 on_message=on_message)
        self.peers.append(peer)
        return peer

    def keyring(self, mesh: str, *, root_key_of: str | None = None) -> KeyRing:
        table = dict(self.tables[mesh])
        if root_key_of is not None:
            table["root_key"] = self.tables[root_key_of]["root_key"]
        return KeyRing.from_configs({mesh: MeshConfig.model_validate(table)})

    def raw_rows(self, mesh: str, topic: str) -> list[Any]:
        """The topic's rows as the broker stores them, oldest first."""
        broker = self.broker_of(mesh)
        rows = broker.topic_messages(self.tables[mesh]["mesh_id"], self.topic_ids[(mesh, topic)])
        return sorted(rows, key=lambda r: (r.created_at, r.id))

    def rows(self, mesh: str, topic: str) -> list[dict[str, Any]]:
        """``{id, text, sender, reply_to, bv}`` per row, decrypted with mesh ``mesh``'s own keys."""
        ring = self.keyring(mesh)
        tid = self.topic_ids[(mesh, topic)]
        members = self.broker_of(mesh).store.members
        out = []
        for r in self.raw_rows(mesh, topic):
            text = ring.open(mesh, tid, topic, r.nonce, r.ciphertext, r.body_version)
            m = members.get(r.sender_member_id)
            out.append({"id": r.id, "text": text, "sender": m.display_name if m else None,
                        "sender_member_id": r.sender_member_id, "reply_to": r.reply_to_id, "bv": r.body_version})
        return out

    def texts(self, mesh: str, topic: str) -> list[str]:
        return [r["text"] for r in self.rows(mesh, topic)]

    async def stop(self) -> None:
        for p in reversed(self.peers):
            await p.stop()
        await self.b2.stop()
        await self.b1.stop()


@pytest.fixture
async def net(tmp_path: Path):
    n = Net(tmp_path / "brokers")
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


def mesh_section(net: Net, names: dict[str, dict[str, Any] | str], **extra: Any) -> dict[str, Any]:
    """``[mesh.*]`` tables: ``{"a": "a"}`` (a Net table name) or ``{"a": {...table...}}``."""
    out = {}
    for name, t in names.items():
        table = net.tables[t] if isinstance(t, str) else t
        out[name] = {**table, **FAST, **extra.get(name, {})}
    return out


@pytest.fixture
async def bridge_app(tmp_path: Path, net: Net):
    """``client, runtime = await bridge_app(config, meshes={"a": "a", "b": "b"}, ready=[("b", "lobby")])``.

    Starts the whole app (builtin plugins, the bridge included) with those ``[mesh.*]`` tables, and
    waits until every ``(mesh, topic)`` in ``ready`` is being polled (so nothing posted afterwards
    is taken for history)."""
    clients = []

    async def make(config: dict[str, Any], *, meshes: dict[str, Any], ready: list[tuple[str, str]] = (),
                   ) -> tuple[Any, Any]:
        state = tmp_path / f"gw{len(clients)}"
        state.mkdir()
        cfg = {**config, "mesh": mesh_section(net, meshes), "delivery": {**DELIVERY, **config.get("delivery", {})}}
        client, runtime = await build_test_app(cfg, state_dir=state)
        clients.append(client)

        def polled() -> bool:
            for mesh, topic in ready:
                peer = runtime.meshes.get(mesh)
                poller = peer.pollers.get(topic) if peer is not None else None
                if poller is None or not poller.initialized:
                    return False
            return True

        await wait_until(polled, 15, f"pollers of {ready}")
        return client, runtime

    try:
        yield make
    finally:
        for c in reversed(clients):
            await c.close()


def two_way(bridge: str = "to_b", far_topic: str = "lobby", **route: Any) -> list[dict[str, Any]]:
    """A:#general <-> <bridge>:<far_topic> as two one-way routes, each attributing its source mesh."""
    return [
        {"name": "a-to-b", "mesh": "a", "topic": "general", "direction": "out",
         "attribution": "{sender} @ a: {text}", "binds": [{"gateway": bridge, "chat": far_topic}], **route},
        {"name": "b-to-a", "mesh": "a", "topic": "general", "direction": "in",
         "attribution": "{sender} @ b: {text}", "binds": [{"gateway": bridge, "chat": far_topic}], **route},
    ]
