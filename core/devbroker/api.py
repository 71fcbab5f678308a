"""The seeding API and test knobs of :class:`~.broker.DevBroker` (documented in ``broker``)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.crypto import KeyPair

from . import topics
from .info import MemberInfo, MeshInfo, TopicInfo
from .model import Invite, Member, Mesh, QueueRow, TopicMessage
from .presence import Conn, Registry
from .ratelimit import TokenBuckets
from .store import Store
from .util import new_id, now_ms

if TYPE_CHECKING:
    from .config import DevBrokerConfig


class BrokerAPI:
    """Mixed into ``DevBroker``: creating meshes, members, topics and invites; knobs for tests."""

    store: Store
    registry: Registry
    buckets: TokenBuckets
    conns: set[Conn]
    config: DevBrokerConfig
    ws_url: str

    dirty: Callable[[], None]  # DevBroker.dirty: schedule a coalesced save of the state file

    # -- seeding API ------------------------------------------------------------------------

    def create_mesh(self, slug: str, *, name: str | None = None, owner: KeyPair | None = None) -> MeshInfo:
        owner = owner or KeyPair.generate()
        mesh = Mesh(id=new_id(), slug=slug, name=name or slug, root_key=crypto.b64url(secrets.token_bytes(32)),
                    owner_pubkey=owner.public_hex, owner_secret=owner.secret_hex, created_at=now_ms())
        self.store.meshes[mesh.id] = mesh
        self.dirty()
        return MeshInfo(mesh.id, mesh.slug, mesh.name, mesh.root_key, owner)

    def mesh_info(self, mesh_id: str) -> MeshInfo:
        mesh = self.store.meshes[mesh_id]
        return MeshInfo(mesh.id, mesh.slug, mesh.name, mesh.root_key, KeyPair.from_secret_hex(mesh.owner_secret))

    def add_member(self, mesh_id: str, display_name: str, *, role: str = "member", groups: Iterable[Any] = (),
                   keypair: KeyPair | None = None, role_tag: str | None = None,
                   message_mode: str | None = None) -> MemberInfo:
        if mesh_id not in self.store.meshes:
            raise KeyError(f"no mesh {mesh_id}")
        keypair = keypair or KeyPair.generate()
        default_groups = [g if isinstance(g, dict) else {"name": g} for g in groups]
        member = Member(id=new_id(), mesh_id=mesh_id, peer_pubkey=keypair.public_hex, display_name=display_name,
                        role=role, role_tag=role_tag, default_groups=default_groups, message_mode=message_mode,
                        created_at=now_ms())
        self.store.members[member.id] = member
        self.dirty()
        return MemberInfo(member.id, mesh_id, display_name, role, keypair)

    def revoke_member(self, mesh_id: str, member_id: str) -> None:
        member = self.store.members[member_id]
        if member.mesh_id != mesh_id:
            raise KeyError(f"member {member_id} is not in mesh {mesh_id}")
        member.revoked_at = now_ms()
        self.dirty()

    def set_grants(self, mesh_id: str, member_id: str, sender_pubkey: str, caps: Iterable[str]) -> None:
        """``member.peer_grants[sender_pubkey] = caps`` (what the recipient ``member_id`` allows the sender)."""
        member = self.store.members[member_id]
        if member.mesh_id != mesh_id:
            raise KeyError(f"member {member_id} is not in mesh {mesh_id}")
        member.peer_grants[sender_pubkey] = list(caps)
        self.dirty()

    def set_mesh_policy(self, mesh_id: str, policy: dict[str, Any] | None) -> None:
        self.store.meshes[mesh_id].policy = policy
        self.dirty()

    def create_topic(self, mesh_id: str, name: str, creator_member_id: str | None, *, visibility: str = "public",
                     description: str | None = None, encrypted: bool = True) -> TopicInfo:
        topic, created = topics.create_topic(self, mesh_id, name, creator_member_id, description=description,
                                             visibility=visibility, encrypted=encrypted)
        return TopicInfo(topic.id, mesh_id, topic.name, created)

    def join_topic(self, mesh_id: str, topic: str, member_id: str, role: str = "member") -> None:
        row = topics.resolve_topic(self, mesh_id, topic)
        if row is None:
            raise KeyError(f'topic "{topic}" not found')
        topics.join_topic(self, row, member_id, role=role)

    def topic_id(self, mesh_id: str, name: str) -> str:
        row = self.store.topic_by_name(mesh_id, name)
        if row is None:
            raise KeyError(f'topic "{name}" not found')
        return row.id

    def sealed_topic_key(self, topic_id: str, member_id: str) -> tuple[str, str] | None:
        """``(encryptedKey_b64, nonce_b64)`` sealed for the member, as ``GET /api/v1/topics/:name/key``."""
        row = next((k for k in self.store.topic_member_keys if k.topic_id == topic_id and k.member_id == member_id),
                   None)
        return (row.encrypted_key, row.nonce) if row else None

    def create_api_key(self, mesh_id: str, capabilities: Iterable[str], *, topic_scopes: Iterable[str] | None = None,
                       issued_by_member_id: str | None = None, label: str = "seeded",
                       expires_in: float | None = None) -> str:
        """A REST API key (A.13); the secret is returned, only its hash is stored. Without
        ``issued_by_member_id`` it is a legacy key with no issuer (``api_key_has_no_issuer``)."""
        from .rest import mint_api_key

        expires = now_ms() + int(expires_in * 1000) if expires_in is not None else None
        _row, secret = mint_api_key(self, mesh_id, label=label, capabilities=list(capabilities),
                                    topic_scopes=list(topic_scopes) if topic_scopes is not None else None,
                                    expires_at_ms=expires, issued_by_member_id=issued_by_member_id)
        return secret

    def mint_invite(self, mesh_id: str, *, role: str = "member", expires_in: int = 7 * 86400, max_uses: int = 1,
                    broker_url: str | None = None, preset: dict[str, Any] | None = None) -> str:
        token = build_invite(self.store, mesh_id, broker_url or self.ws_url, role=role, expires_in=expires_in,
                             max_uses=max_uses, preset=preset)
        self.dirty()
        return token

    # -- test knobs -------------------------------------------------------------------------

    def drop_connections(self, mesh_id: str | None = None, *, pubkey: str | None = None) -> int:
        """Abort sockets with no close frame (a network failure): their presences enter grace.

        ``mesh_id`` limits it to one mesh, ``pubkey`` to presences with that member or session pubkey.
        """
        n = 0
        for conn in list(self.conns):
            p = conn.presence
            if mesh_id is not None and (p is None or p.mesh_id != mesh_id):
                continue
            if pubkey is not None and (p is None or pubkey not in (p.member_pubkey, p.session_pubkey)):
                continue
            conn.terminate()
            n += 1
        return n

    def orphan_presences(self, mesh_id: str | None = None, *, pubkey: str | None = None) -> int:
        """Forget online presences but leave their sockets open: the zombies of upstream's close/reattach
        race. Each socket then gets ``no_hello`` for every verb, and the next ``keepalive_tick`` older
        than ``zombie_min_age_s`` closes it with 4005 ``no_presence``. Same filters as ``drop_connections``.
        """
        n = 0
        for p in list(self.registry.entries.values()):
            conn = p.conn
            if p.lease != "online" or conn is None:
                continue
            if mesh_id is not None and p.mesh_id != mesh_id:
                continue
            if pubkey is not None and pubkey not in (p.member_pubkey, p.session_pubkey):
                continue
            self.registry.delete(p, decrement=True)
            p.db_disconnected = True
            p.conn, conn.presence = None, None
            n += 1
        return n

    def set_status(self, pubkey: str, status: str) -> int:
        """Force the computed status of presences whose member or session pubkey is ``pubkey``."""
        if status not in ("idle", "working", "dnd"):
            raise ValueError("status must be idle, working or dnd")
        n = 0
        for p in self.registry.entries.values():
            if pubkey in (p.member_pubkey, p.session_pubkey):
                p.forced_status = None if status == "idle" else status
                if status != "dnd" and p.manual_status == "dnd":
                    p.manual_status = None
                n += 1
        return n

    def set_rate_limit(self, burst: int, per_minute: float) -> None:
        self.buckets.configure(burst, per_minute)

    def presences(self, mesh_id: str | None = None) -> list[dict[str, Any]]:
        return [p.snapshot() for p in self.registry.entries.values() if mesh_id is None or p.mesh_id == mesh_id]

    def mesh_count(self, mesh_id: str) -> int:
        return self.registry.count(mesh_id)

    def queue_rows(self, mesh_id: str | None = None) -> list[QueueRow]:
        return [r for r in self.store.queue if mesh_id is None or r.mesh_id == mesh_id]

    def topic_messages(self, mesh_id: str | None = None, topic_id: str | None = None) -> list[TopicMessage]:
        return [m for m in self.store.topic_messages
                if (mesh_id is None or m.mesh_id == mesh_id) and (topic_id is None or m.topic_id == topic_id)]


def build_invite(store: Store, mesh_id: str, broker_url: str, *, role: str = "member",
                 expires_in: int = 7 * 86400, max_uses: int = 1, preset: dict[str, Any] | None = None) -> str:
    """Mint a v1 invite token (same JSON and signature as the real broker) and record it in ``store``."""
    if role not in ("member", "admin"):
        raise ValueError("role must be member or admin")
    mesh = store.meshes[mesh_id]
    owner = KeyPair.from_secret_hex(mesh.owner_secret)
    expires_at = int(time.time()) + int(expires_in)
    token = crypto.mint_invite({
        "v": 1, "mesh_id": mesh.id, "mesh_slug": mesh.slug, "broker_url": broker_url, "expires_at": expires_at,
        "mesh_root_key": mesh.root_key, "role": role, "owner_pubkey": mesh.owner_pubkey}, owner)
    store.invites[token] = Invite(id=new_id(), mesh_id=mesh.id, token=token, role=role, expires_at=expires_at,
                                  max_uses=max_uses, created_at=now_ms(), preset=preset)
    return token
