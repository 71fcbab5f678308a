"""Mesh cryptography, byte for byte as the broker and the reference CLI do it.

Every function here is checked against ``mesh-vectors.json`` and
``topic-key-vectors.json`` (tests/mesh/test_vectors.py). Nothing in this module
logs, and nothing returns a key inside an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.secret
import nacl.utils
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

HEX64 = re.compile(r"^[0-9a-f]{64}$")
TOPIC_KEY_SALT = b"claudemesh/topic-key/v1"
NONCE_BYTES = 24


# -- encodings ----------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def random_nonce() -> bytes:
    return nacl.utils.random(NONCE_BYTES)


# -- keys ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KeyPair:
    """An ed25519 keypair. ``secret`` is libsodium's 64-byte form (seed || pubkey)."""

    signing: SigningKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        return cls(SigningKey(seed))

    @classmethod
    def from_secret_hex(cls, secret_hex: str) -> KeyPair:
        """Accept the 64-byte (128 hex) libsodium form or a bare 32-byte seed; check consistency."""
        raw = bytes.fromhex(secret_hex.strip())
        if len(raw) not in (32, 64):
            raise ValueError("secret key must be 64 bytes (128 hex chars) or a 32-byte seed")
        pair = cls(SigningKey(raw[:32]))
        if len(raw) == 64 and raw[32:] != pair.public_bytes:
            raise ValueError("secret key's second half does not match the public key derived from its seed")
        return pair

    @property
    def public_bytes(self) -> bytes:
        return bytes(self.signing.verify_key)

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    @property
    def secret_hex(self) -> str:
        return (bytes(self.signing) + self.public_bytes).hex()

    def sign_hex(self, message: str) -> str:
        return self.signing.sign(message.encode("utf-8")).signature.hex()

    @property
    def x25519_private(self) -> PrivateKey:
        return self.signing.to_curve25519_private_key()

    @property
    def x25519_public(self) -> PublicKey:
        return self.signing.verify_key.to_curve25519_public_key()


def verify_hex(pubkey_hex: str, message: str, signature_hex: str) -> bool:
    """True when ``signature_hex`` (case-insensitive hex) is ``pubkey_hex``'s signature of UTF-8 ``message``."""
    try:
        VerifyKey(bytes.fromhex(pubkey_hex)).verify(message.encode("utf-8"), bytes.fromhex(signature_hex))
        return True
    except (ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False


def ed25519_pk_to_x25519(pubkey_hex: str) -> PublicKey:
    return VerifyKey(bytes.fromhex(pubkey_hex)).to_curve25519_public_key()


# -- canonical signed strings (apps/broker/src/crypto.ts) ---------------------------------

def canonical_hello(mesh_id: str, member_id: str, pubkey: str, timestamp: int) -> str:
    return f"{mesh_id}|{member_id}|{pubkey}|{timestamp}"


def canonical_attestation(parent_member_pubkey: str, session_pubkey: str, expires_at: int) -> str:
    return f"claudemesh-session-attest|{parent_member_pubkey}|{session_pubkey}|{expires_at}"


def canonical_session_hello(mesh_id: str, parent_member_pubkey: str, session_pubkey: str, timestamp: int) -> str:
    return f"claudemesh-session-hello|{mesh_id}|{parent_member_pubkey}|{session_pubkey}|{timestamp}"


def canonical_invite(p: dict) -> str:
    return "|".join(
        str(p[k]) for k in ("v", "mesh_id", "mesh_slug", "broker_url", "expires_at", "mesh_root_key", "role",
                            "owner_pubkey")
    )


# -- direct messages: crypto_box ------------------------------------------------------------

def box_seal(plaintext: str, recipient_pubkey_hex: str, sender: KeyPair, nonce: bytes | None = None) -> tuple[str, str]:
    """Return ``(nonce_b64, ciphertext_b64)`` for a DM to ``recipient_pubkey_hex`` (ed25519 hex)."""
    nonce = nonce or random_nonce()
    box = Box(sender.x25519_private, ed25519_pk_to_x25519(recipient_pubkey_hex))
    return b64(nonce), b64(box.encrypt(plaintext.encode("utf-8"), nonce).ciphertext)


def box_open(nonce_b64: str, ciphertext_b64: str, sender_pubkey_hex: str, recipient: KeyPair) -> str | None:
    """Open a DM; None when it is not ours (wrong key, tampered, not a box)."""
    try:
        box = Box(recipient.x25519_private, ed25519_pk_to_x25519(sender_pubkey_hex))
        return box.decrypt(unb64(ciphertext_b64), unb64(nonce_b64)).decode("utf-8")
    except (ValueError, binascii.Error, nacl.exceptions.CryptoError, UnicodeDecodeError, TypeError):
        return None


# -- topic bodies -----------------------------------------------------------------------------

def derive_topic_key(root_key: bytes, mesh_id: str, topic_id: str, epoch: int = 0) -> bytes:
    """Our bodyVersion 3 extension: HKDF-SHA256(root, salt, "mesh:<id>|topic:<id>|epoch:<n>", 32)."""
    info = f"mesh:{mesh_id}|topic:{topic_id}|epoch:{epoch}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=TOPIC_KEY_SALT, info=info).derive(root_key)


def secretbox_seal(plaintext: str, key: bytes, nonce: bytes | None = None) -> tuple[str, str]:
    nonce = nonce or random_nonce()
    return b64(nonce), b64(nacl.secret.SecretBox(key).encrypt(plaintext.encode("utf-8"), nonce).ciphertext)


def secretbox_open(nonce_b64: str, ciphertext_b64: str, key: bytes) -> str | None:
    try:
        return nacl.secret.SecretBox(key).decrypt(unb64(ciphertext_b64), unb64(nonce_b64)).decode("utf-8")
    except (ValueError, binascii.Error, nacl.exceptions.CryptoError, UnicodeDecodeError, TypeError):
        return None


def v1_encode(plaintext: str) -> str:
    return b64(plaintext.encode("utf-8"))


def v1_decode(ciphertext_b64: str) -> str | None:
    """Strict: invalid base64 or UTF-8 gives None (never show garbage)."""
    try:
        return unb64(ciphertext_b64).decode("utf-8", errors="strict")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def open_sealed_topic_key(encrypted_key_b64: str, nonce_b64: str, member: KeyPair) -> bytes | None:
    """bodyVersion 2 interop: open a per-member sealed copy of a broker topic key."""
    try:
        blob = unb64(encrypted_key_b64)
        box = Box(member.x25519_private, PublicKey(blob[:32]))
        return box.decrypt(blob[32:], unb64(nonce_b64))
    except (ValueError, binascii.Error, nacl.exceptions.CryptoError, TypeError):
        return None


def seal_topic_key(topic_key: bytes, member_pubkey_hex: str, sender_x25519: PrivateKey,
                   nonce: bytes | None = None) -> tuple[str, str]:
    nonce = nonce or random_nonce()
    box = Box(sender_x25519, ed25519_pk_to_x25519(member_pubkey_hex))
    return b64(bytes(sender_x25519.public_key) + box.encrypt(topic_key, nonce).ciphertext), b64(nonce)


# -- request fingerprint (apps/cli/src/daemon/fingerprint.ts) ------------------------------------

def request_fingerprint(*, envelope_version: int, destination_kind: str, destination_ref: str,
                        reply_to_id: str, priority: str, meta: dict | None, body: str) -> str:
    meta_json = "" if meta is None else json.dumps(meta, sort_keys=True, separators=(",", ":"))
    pre = b"\x00".join(
        s.encode("utf-8") for s in (str(envelope_version), destination_kind, destination_ref, reply_to_id or "",
                                    priority, meta_json)
    ) + b"\x00" + hashlib.sha256(body.encode("utf-8")).digest()
    return hashlib.sha256(pre).hexdigest()


# -- v1 invites -----------------------------------------------------------------------------------

INVITE_KEYS = ("v", "mesh_id", "mesh_slug", "broker_url", "expires_at", "mesh_root_key", "role", "owner_pubkey")


def mint_invite(payload: dict, owner: KeyPair) -> str:
    """Sign ``payload`` (without signature) and return the b64url token, key order as the broker writes it."""
    body = {k: payload[k] for k in INVITE_KEYS}
    body["signature"] = owner.sign_hex(canonical_invite(body))
    return b64url(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def decode_invite(token_or_link: str) -> tuple[str, dict]:
    """Return ``(token, payload)`` from a token or a ``.../join/<token>`` / ``ic://join/<token>`` link."""
    token = token_or_link.strip()
    m = re.search(r"(?:^|/)join/([A-Za-z0-9_-]+)/?$", token)
    if m:
        token = m.group(1)
    try:
        payload = json.loads(unb64url(token).decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not a v1 invite token or link (it does not decode to JSON)") from exc
    if not isinstance(payload, dict) or payload.get("v") != 1:
        raise ValueError("not a v1 invite (field v must be 1)")
    missing = [k for k in (*INVITE_KEYS, "signature") if k not in payload]
    if missing:
        raise ValueError(f"invite is missing {', '.join(missing)}")
    return token, payload


def verify_invite(payload: dict, now_s: float) -> None:
    """Raise ValueError with a clear reason when the signature or expiry is wrong."""
    if not verify_hex(payload["owner_pubkey"], canonical_invite(payload), payload["signature"]):
        raise ValueError("invite signature does not verify against its owner_pubkey")
    if float(payload["expires_at"]) <= now_s:
        raise ValueError("invite has expired")
