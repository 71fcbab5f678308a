"""Every vector in mesh-vectors.json and topic-key-vectors.json, byte for byte."""

import json
from pathlib import Path

import pytest
from claudemesh_gateway.mesh import crypto

VEC = Path(__file__).parent.parent / "vectors"
M = json.loads((VEC / "mesh-vectors.json").read_text())
T = json.loads((VEC / "topic-key-vectors.json").read_text())
K = M["keys"]
I = M["inputs"]


def kp(name):
    return crypto.KeyPair.from_secret_hex(K[name]["ed25519_secret_key_64_hex"])


@pytest.mark.parametrize("name", ["member", "session", "peer"])
def test_keys_and_x25519_conversions(name):
    pair = crypto.KeyPair.from_seed(bytes.fromhex(K[name]["seed_hex"]))
    assert pair.public_hex == K[name]["ed25519_pubkey_hex"]
    assert pair.secret_hex == K[name]["ed25519_secret_key_64_hex"]
    assert bytes(pair.x25519_private).hex() == K[name]["x25519_secret_key_hex"]
    assert bytes(pair.x25519_public).hex() == K[name]["x25519_pubkey_hex"]
    conv = M["x25519_conversions"]
    assert bytes(pair.x25519_private).hex() == conv[f"{name}_sk_to_curve25519"]
    assert bytes(pair.x25519_public).hex() == conv[f"{name}_pk_to_curve25519"]


def test_secret_key_mismatch_rejected():
    bad = K["member"]["seed_hex"] + K["peer"]["ed25519_pubkey_hex"]
    with pytest.raises(ValueError, match="does not match"):
        crypto.KeyPair.from_secret_hex(bad)


def test_hello_signature():
    v = M["hello"]
    canon = crypto.canonical_hello(I["meshId"], I["memberId"], K["member"]["ed25519_pubkey_hex"], I["timestamp_ms"])
    assert canon == v["canonical"]
    assert kp("member").sign_hex(canon) == v["signature_hex"] == v["frame_example"]["signature"]
    assert crypto.verify_hex(K["member"]["ed25519_pubkey_hex"], canon, v["signature_hex"].upper())
    assert not crypto.verify_hex(K["peer"]["ed25519_pubkey_hex"], canon, v["signature_hex"])


def test_session_attestation_and_hello():
    a, s = M["session_attestation"], M["session_hello"]
    member, session = K["member"]["ed25519_pubkey_hex"], K["session"]["ed25519_pubkey_hex"]
    canon_a = crypto.canonical_attestation(member, session, a["expiresAt_ms"])
    assert canon_a == a["canonical"]
    assert kp("member").sign_hex(canon_a) == a["signature_hex"]
    canon_s = crypto.canonical_session_hello(I["meshId"], member, session, I["timestamp_ms"])
    assert canon_s == s["canonical"]
    assert kp("session").sign_hex(canon_s) == s["signature_hex"]
    assert s["frame_example"]["parentAttestation"]["signature"] == a["signature_hex"]


def test_dm_crypto_box_both_ways():
    v = M["dm_crypto_box"]
    nonce = crypto.unb64(v["nonce_b64"])
    n, ct = crypto.box_seal(v["plaintext_utf8"], v["recipient_ed25519_pubkey_hex"], kp("session"), nonce)
    assert (n, ct) == (v["nonce_b64"], v["ciphertext_b64"])
    assert len(crypto.unb64(ct)) == v["ciphertext_len"]
    assert crypto.box_open(n, ct, v["sender_ed25519_pubkey_hex"], kp("peer")) == v["plaintext_utf8"]
    assert crypto.box_open(n, ct, v["sender_ed25519_pubkey_hex"], kp("member")) is None


def test_v1_body():
    v = M["v1_body"]
    assert crypto.v1_encode(v["plaintext_utf8"]) == v["ciphertext_b64"]
    assert crypto.v1_decode(v["ciphertext_b64"]) == v["plaintext_utf8"]
    assert crypto.v1_decode(crypto.b64(b"\xff\xfe")) is None  # strict UTF-8
    assert crypto.v1_decode("not base64!") is None


def test_v2_body():
    v = M["v2_body"]
    key = bytes.fromhex(v["topic_key_hex"])
    assert crypto.secretbox_seal(v["plaintext_utf8"], key, crypto.unb64(v["nonce_b64"])) == (v["nonce_b64"], v["ciphertext_b64"])
    assert crypto.secretbox_open(v["nonce_b64"], v["ciphertext_b64"], key) == v["plaintext_utf8"]


def test_sealed_topic_key():
    v = M["sealed_topic_key"]
    assert crypto.open_sealed_topic_key(v["encryptedKey_b64"], v["nonce_b64"], kp("member")).hex() == v["topic_key_hex"]
    from nacl.public import PrivateKey
    sealer = PrivateKey.from_seed(bytes.fromhex(K["sealer_x25519"]["seed_hex"]))
    blob, nonce = crypto.seal_topic_key(bytes.fromhex(v["topic_key_hex"]), v["recipient_member_ed25519_pubkey_hex"],
                                        sealer, crypto.unb64(v["nonce_b64"]))
    assert (blob, nonce) == (v["encryptedKey_b64"], v["nonce_b64"])


def test_request_fingerprint():
    v = M["request_fingerprint"]
    fp = crypto.request_fingerprint(envelope_version=v["envelope_version"], destination_kind=v["destination_kind"],
                                    destination_ref=v["destination_ref"], reply_to_id=v["reply_to_id"],
                                    priority=v["priority"], meta=v["meta"], body=v["body_utf8"])
    assert fp == v["fingerprint_hex"]


def test_root_key():
    v = M["root_key"]
    assert crypto.b64url(bytes.fromhex(v["bytes_hex"])) == v["b64url_nopad"]
    assert crypto.unb64url(v["b64url_nopad"]).hex() == v["bytes_hex"]


def test_invite_v1():
    v = M["invite_v1"]
    assert crypto.canonical_invite(v["payload"]) == v["canonical"]
    owner = kp("peer")
    assert owner.public_hex == v["owner_ed25519_pubkey_hex"]
    token = crypto.mint_invite(v["payload"], owner)
    assert crypto.unb64url(token).decode() == v["payload_json"]
    if "token" in v:
        assert token == v["token"]
    tok, payload = crypto.decode_invite(f"ic://join/{token}")
    assert tok == token and payload == v["payload"]
    crypto.verify_invite(payload, now_s=v["payload"]["expires_at"] - 1)
    with pytest.raises(ValueError, match="expired"):
        crypto.verify_invite(payload, now_s=v["payload"]["expires_at"] + 1)
    with pytest.raises(ValueError, match="signature"):
        crypto.verify_invite({**payload, "role": "admin"}, now_s=0)


@pytest.mark.parametrize("case", T["topic_keys"])
def test_topic_keys(case):
    root = crypto.unb64url(case["root_key"])
    key = crypto.derive_topic_key(root, case["mesh_id"], case["topic_id"], case["epoch"])
    assert key.hex() == case["topic_key_hex"]
    assert f"mesh:{case['mesh_id']}|topic:{case['topic_id']}|epoch:{case['epoch']}" == case["info"]


def test_body_v3():
    v = T["body_v3"]
    key = bytes.fromhex(v["topic_key_hex"])
    assert crypto.secretbox_seal(v["plaintext_utf8"], key, crypto.unb64(v["nonce_b64"])) == (v["nonce_b64"], v["ciphertext_b64"])
    assert crypto.secretbox_open(v["nonce_b64"], v["ciphertext_b64"], key) == v["plaintext_utf8"]
    other = crypto.derive_topic_key(b"\x00" * 32, "m", "t", 0)
    assert crypto.secretbox_open(v["nonce_b64"], v["ciphertext_b64"], other) is None
