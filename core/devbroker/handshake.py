"""``hello`` / ``session_hello`` validation, in the broker's exact order (spec B.6, B.8, A.4)."""

from __future__ import annotations

from typing import Any

from claudemesh_gateway.mesh import crypto

from .model import Member, Mesh
from .store import Store
from .util import HEX64_ANY, HEX64_LOWER, HEX128_ANY, is_number, js_str


class HandshakeError(Exception):
    """An error frame followed by a close; ``reason`` defaults to the code."""

    def __init__(self, code: str, message: str, close_code: int = 1008, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code
        self.reason = reason if reason is not None else code


def _capacity(mesh_id: Any, count_of: Any, limit: int) -> None:
    if count_of(mesh_id) >= limit:
        raise HandshakeError("capacity", "mesh at connection capacity")


def _lookup_member(store: Store, mesh_id: Any, pubkey: Any, miss_message: str) -> Member:
    if isinstance(mesh_id, str) and isinstance(pubkey, str):
        member = store.member_by_pubkey(mesh_id, pubkey, revoked=False)
        if member is not None:
            return member
        if store.member_by_pubkey(mesh_id, pubkey, revoked=True) is not None:
            mesh: Mesh | None = store.meshes.get(mesh_id)
            name = (mesh.name or mesh.slug) if mesh else mesh_id
            raise HandshakeError(
                "revoked", f'You\'ve been removed from "{name}". Contact the mesh owner to rejoin.',
                close_code=4002, reason="banned",
            )
    raise HandshakeError("unauthorized", miss_message)


def _check_skew(ts: Any, now: int, skew_ms: int, label: str) -> None:
    if not is_number(ts) or abs(now - ts) > skew_ms:
        raise HandshakeError("timestamp_skew", f"{label} rejected: timestamp_skew")


def check_hello(msg: dict[str, Any], *, store: Store, count_of: Any, capacity: int, skew_ms: int,
                now: int) -> Member:
    """Return the authenticated member or raise ``HandshakeError``."""
    session_pk = msg.get("sessionPubkey")
    if session_pk not in (None, "") and not (isinstance(session_pk, str) and HEX64_LOWER.match(session_pk)):
        raise HandshakeError("bad_session_pubkey", "sessionPubkey must be 64 lowercase hex chars")
    mesh_id = msg.get("meshId")
    _capacity(mesh_id, count_of, capacity)
    ts = msg.get("timestamp")
    _check_skew(ts, now, skew_ms, "hello")
    pubkey, sig = msg.get("pubkey"), msg.get("signature")
    if not (isinstance(pubkey, str) and HEX64_ANY.match(pubkey) and isinstance(sig, str) and HEX128_ANY.match(sig)):
        raise HandshakeError("malformed", "hello rejected: malformed")
    canonical = crypto.canonical_hello(js_str(mesh_id), js_str(msg.get("memberId")), pubkey, js_str(ts))
    if not crypto.verify_hex(pubkey, canonical, sig):
        raise HandshakeError("bad_signature", "hello rejected: bad_signature")
    return _lookup_member(store, mesh_id, pubkey, "pubkey not found in mesh")


def check_session_hello(msg: dict[str, Any], *, store: Store, count_of: Any, capacity: int, skew_ms: int,
                        max_ttl_ms: int, now: int) -> Member:
    session_pk, parent_pk = msg.get("sessionPubkey"), msg.get("parentMemberPubkey")
    if not (isinstance(session_pk, str) and HEX64_LOWER.match(session_pk)):
        raise HandshakeError("bad_session_pubkey", "sessionPubkey must be 64 lowercase hex chars")
    if not (isinstance(parent_pk, str) and HEX64_LOWER.match(parent_pk)):
        raise HandshakeError("bad_parent_pubkey", "parentMemberPubkey must be 64 lowercase hex chars")
    att = msg.get("parentAttestation")
    if not (isinstance(att, dict) and att.get("sessionPubkey") == session_pk
            and att.get("parentMemberPubkey") == parent_pk):
        raise HandshakeError("attestation_mismatch",
                             "parentAttestation does not bind the claimed session+parent pubkeys")
    mesh_id = msg.get("meshId")
    _capacity(mesh_id, count_of, capacity)

    expires_at, att_sig = att.get("expiresAt"), att.get("signature")
    if not is_number(expires_at):
        raise HandshakeError("malformed", "attestation rejected: malformed")
    if expires_at <= now:
        raise HandshakeError("expired", "attestation rejected: expired")
    if expires_at > now + max_ttl_ms:
        raise HandshakeError("ttl_too_long", "attestation rejected: ttl_too_long")
    if not (isinstance(att_sig, str) and HEX128_ANY.match(att_sig)):
        raise HandshakeError("malformed", "attestation rejected: malformed")
    if not crypto.verify_hex(parent_pk, crypto.canonical_attestation(parent_pk, session_pk, js_str(expires_at)),
                             att_sig):
        raise HandshakeError("bad_signature", "attestation rejected: bad_signature")

    ts, sig = msg.get("timestamp"), msg.get("signature")
    _check_skew(ts, now, skew_ms, "session_hello")
    if not (isinstance(sig, str) and HEX128_ANY.match(sig)):
        raise HandshakeError("malformed", "session_hello rejected: malformed")
    canonical = crypto.canonical_session_hello(js_str(mesh_id), parent_pk, session_pk, js_str(ts))
    if not crypto.verify_hex(session_pk, canonical, sig):
        raise HandshakeError("bad_signature", "session_hello rejected: bad_signature")

    member = _lookup_member(store, mesh_id, parent_pk, "parent pubkey not found in mesh")
    parent_member_id = msg.get("parentMemberId")
    if parent_member_id is not None and parent_member_id != member.id:
        raise HandshakeError("parent_member_id_mismatch", "parentMemberId does not match parentMemberPubkey")
    return member


def presence_fields_ok(msg: dict[str, Any]) -> bool:
    """The NOT NULL presence columns: sessionId (string), pid (integer), cwd (string)."""
    pid = msg.get("pid")
    return (isinstance(msg.get("sessionId"), str) and isinstance(msg.get("cwd"), str)
            and isinstance(pid, int | float) and not isinstance(pid, bool) and float(pid).is_integer())
