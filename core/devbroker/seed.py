"""First-start seeding of the ``dev`` mesh and the ready-to-use ``meshes.toml``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claudemesh_gateway.mesh.config import http_url_for
from claudemesh_gateway.mesh.crypto import KeyPair

from .info import DevSeed, MemberInfo, MeshInfo

if TYPE_CHECKING:
    from .broker import DevBroker

log = logging.getLogger(__name__)

SEED_MEMBERS = (("gateway", "member"), ("alice", "admin"), ("bob", "member"))
MESHES_TOML = "meshes.toml"
SEALED_TOPIC = "team"


def seed_dev_mesh(b: DevBroker) -> None:
    """Create mesh ``dev`` with a keyless ``general`` topic, a sealed-key topic ``team`` (see
    :func:`ensure_sealed_topic`) and members gateway, alice (admin) and bob."""
    mesh = b.create_mesh("dev", name="dev")
    members = {}
    for name, role in SEED_MEMBERS:
        members[name] = b.add_member(mesh.mesh_id, name, role=role)
    topic = b.create_topic(mesh.mesh_id, "general", members["gateway"].member_id, encrypted=False)
    for name in ("alice", "bob"):
        b.join_topic(mesh.mesh_id, topic.topic_id, members[name].member_id)
    b.store.seed = {
        "mesh_id": mesh.mesh_id,
        "general_topic_id": topic.topic_id,
        "members": {name: {"member_id": m.member_id, "secret_hex": m.secret_hex} for name, m in members.items()},
    }
    b.dirty()
    log.info("seeded dev mesh %s (members gateway, alice, bob; topic general)", mesh.mesh_id)


def ensure_sealed_topic(b: DevBroker, seed: DevSeed) -> None:
    """Topic ``team`` of the seeded mesh (added to older state files too): created by ``gateway``,
    so the broker seals its random key (bodyVersion 2) for the gateway only, as upstream's
    ``topic_create`` does; alice and bob are joined and wait for a key holder to seal for them."""
    if b.store.topic_by_name(seed.mesh_id, SEALED_TOPIC) is not None:
        return
    topic = b.create_topic(seed.mesh_id, SEALED_TOPIC, seed.gateway.member_id, encrypted=True)
    for member in (seed.alice, seed.bob):
        b.join_topic(seed.mesh_id, topic.topic_id, member.member_id)
    log.info("seeded sealed-key topic %s in dev mesh %s", SEALED_TOPIC, seed.mesh_id)


def load_seed(b: DevBroker) -> DevSeed | None:
    raw = b.store.seed
    if not raw or raw.get("mesh_id") not in b.store.meshes:
        return None
    mesh = b.store.meshes[raw["mesh_id"]]
    info = MeshInfo(mesh.id, mesh.slug, mesh.name, mesh.root_key, KeyPair.from_secret_hex(mesh.owner_secret))
    members = {}
    for name in ("gateway", "alice", "bob"):
        entry = raw["members"][name]
        row = b.store.members[entry["member_id"]]
        members[name] = MemberInfo(row.id, row.mesh_id, row.display_name, row.role,
                                   KeyPair.from_secret_hex(entry["secret_hex"]))
    return DevSeed(info, members["gateway"], members["alice"], members["bob"], raw["general_topic_id"])


def _toml_str(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in out) + '"'


def mesh_tables(seed: DevSeed, broker_url: str) -> dict[str, dict[str, Any]]:
    """The ``[mesh.<name>]`` tables of ``meshes.toml``: ``dev`` (gateway), ``dev_alice``, ``dev_bob``.
    ``rest.url`` is the broker's HTTP port, where it serves the web app's ``/api/v1`` (A.13)."""
    tables: dict[str, dict[str, Any]] = {}
    for table, member in (("dev", seed.gateway), ("dev_alice", seed.alice), ("dev_bob", seed.bob)):
        tables[table] = {
            "broker_url": broker_url,
            "mesh_id": seed.mesh.mesh_id,
            "member_id": member.member_id,
            "secret_key": member.secret_hex,
            "root_key": seed.mesh.root_key_b64url,
            "display_name": member.display_name,
            "rest": {"url": http_url_for(broker_url)},
        }
    return tables


def meshes_toml(seed: DevSeed, broker_url: str) -> str:
    lines = ["# Written by `claudemesh-gateway dev-broker` on every start (the broker_url carries the bound port).",
             "# [mesh.dev] is the gateway's identity; dev_alice / dev_bob are demo identities for `mesh send/tail`.",
             ""]
    for table, values in mesh_tables(seed, broker_url).items():
        lines.append(f"[mesh.{table}]")
        for key, value in values.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {_toml_str(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {_toml_str(value)}")
        lines.append("")
    return "\n".join(lines)


def write_meshes_toml(state_dir: Path, seed: DevSeed, broker_url: str) -> Path:
    path = Path(state_dir) / MESHES_TOML
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(meshes_toml(seed, broker_url), encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
