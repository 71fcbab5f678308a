"""Value objects returned by the DevBroker seeding API."""

from __future__ import annotations

from dataclasses import dataclass

from claudemesh_gateway.mesh.crypto import KeyPair


@dataclass(frozen=True, slots=True)
class MeshInfo:
    mesh_id: str
    slug: str
    name: str
    root_key_b64url: str
    owner: KeyPair


@dataclass(frozen=True, slots=True)
class MemberInfo:
    member_id: str
    mesh_id: str
    display_name: str
    role: str
    keypair: KeyPair | None           # None when only the public key was supplied

    @property
    def pubkey(self) -> str:
        assert self.keypair is not None
        return self.keypair.public_hex

    @property
    def secret_hex(self) -> str:
        assert self.keypair is not None
        return self.keypair.secret_hex


@dataclass(frozen=True, slots=True)
class TopicInfo:
    topic_id: str
    mesh_id: str
    name: str
    created: bool


@dataclass(frozen=True, slots=True)
class DevSeed:
    """The mesh seeded on first start: slug ``dev``, members gateway/alice/bob, topic ``general``."""

    mesh: MeshInfo
    gateway: MemberInfo
    alice: MemberInfo
    bob: MemberInfo
    general_topic_id: str

    @property
    def mesh_id(self) -> str:
        return self.mesh.mesh_id

    @property
    def members(self) -> dict[str, MemberInfo]:
        return {"gateway": self.gateway, "alice": self.alice, "bob": self.bob}
