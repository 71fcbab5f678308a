"""Hello frames (A.3) and what each broker refusal means (A.4, A.6)."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any, Literal

from . import crypto
from .state import SessionIdentity

__all__ = ["ATTESTATION_TTL_MS", "Refusal", "build_hello", "build_session_hello", "classify_refusal"]

ATTESTATION_TTL_MS = 12 * 3600 * 1000


def _common(cfg: Any, ident: SessionIdentity) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "sessionPubkey": ident.pubkey, "sessionId": ident.session_id, "pid": os.getpid(), "cwd": cfg.cwd,
        "displayName": cfg.display_name, "peerType": "connector", "channel": "claudemesh-gateway",
        "hostname": cfg.hostname or socket.gethostname(),
    }
    if cfg.groups:
        frame["groups"] = [{"name": g.name, **({"role": g.role} if g.role else {})} for g in cfg.groups]
    return frame


def build_hello(cfg: Any, ident: SessionIdentity, now_ms: int) -> dict[str, Any]:
    """Member-signed ``hello`` (peerRole control-plane). We always send our session pubkey."""
    member = cfg.member_keypair()
    sig = member.sign_hex(crypto.canonical_hello(cfg.mesh_id, cfg.member_id, member.public_hex, now_ms))
    return {"type": "hello", "meshId": cfg.mesh_id, "memberId": cfg.member_id, "pubkey": member.public_hex,
            **_common(cfg, ident), "timestamp": now_ms, "signature": sig}


def build_session_hello(cfg: Any, ident: SessionIdentity, now_ms: int) -> dict[str, Any]:
    """``session_hello`` with an attestation re-minted now with a 12 h TTL (A.3.3)."""
    member = cfg.member_keypair()
    expires = now_ms + ATTESTATION_TTL_MS
    attestation = {
        "sessionPubkey": ident.pubkey, "parentMemberPubkey": member.public_hex, "expiresAt": expires,
        "signature": member.sign_hex(crypto.canonical_attestation(member.public_hex, ident.pubkey, expires)),
    }
    sig = ident.keypair.sign_hex(crypto.canonical_session_hello(cfg.mesh_id, member.public_hex, ident.pubkey, now_ms))
    return {"type": "session_hello", "meshId": cfg.mesh_id, "parentMemberId": cfg.member_id,
            "parentMemberPubkey": member.public_hex, "parentAttestation": attestation, **_common(cfg, ident),
            "timestamp": now_ms, "signature": sig}


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """What to do about a handshake error / close: ``terminal``, ``retry`` (backoff), ``capacity``,
    ``skew`` (retry, alert) or ``attestation`` (re-mint once, then terminal)."""

    action: Literal["terminal", "retry", "capacity", "skew", "attestation"]
    code: str
    human: str


_TERMINAL = {
    "unauthorized": "broker refused our key: pubkey not found in mesh — is member_id/secret_key for this mesh?",
    "revoked": "this member was removed from the mesh (revoked); ask the mesh owner to re-invite the gateway",
    "banned": "this member was banned from the mesh (close 4002); ask the mesh owner to re-invite the gateway",
    "kicked": "a mesh admin kicked this gateway (close 4001); restart it once that is resolved",
    "bad_signature": "broker rejected our hello signature — secret_key does not match the member pubkey?",
    "malformed": "broker says our hello is malformed (pubkey/signature shape) — check secret_key",
    "bad_session_pubkey": "broker rejected our session pubkey shape (must be 64 lowercase hex)",
    "bad_parent_pubkey": "broker rejected our member pubkey shape (must be 64 lowercase hex)",
    "attestation_mismatch": "broker says our session attestation does not bind our keys",
    "parent_member_id_mismatch": "member_id does not belong to this secret_key's pubkey — fix member_id",
    "session_replaced": "another process connected with this gateway's session identity (session_replaced); "
                        "run only one gateway per store, or stop the other one",
    "forbidden": "broker refused the request (forbidden)",
}


def classify_refusal(code: str, message: str = "") -> Refusal:
    """Map an error code (or a close reason) to an action and a one-line human message."""
    code = (code or "").strip()
    if message.startswith("attestation rejected:"):
        return Refusal("attestation", code, f"broker rejected our session attestation ({code}); check the clock")
    if code == "timestamp_skew":
        return Refusal("skew", code, "clock skew: fix the system clock (the broker allows ±60 s)")
    if code == "capacity":
        return Refusal("capacity", code, "mesh at connection capacity; backing off (alert the mesh owner)")
    if code in _TERMINAL:
        return Refusal("terminal", code, _TERMINAL[code])
    return Refusal("retry", code or "closed", message or code or "connection closed")
