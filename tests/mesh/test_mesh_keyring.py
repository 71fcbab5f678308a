"""KeyRing: HKDF topic keys, epochs, plaintext topics, separate secrets, v2 without a key."""

from __future__ import annotations

import secrets

import pytest
from claudemesh_gateway.keys import KeyRing, KeyRingError
from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.config import MeshConfig
from claudemesh_gateway.mesh.crypto import KeyPair

TOPIC = "T" * 32


def _cfg(**over) -> MeshConfig:
    data = {"broker_url": "ws://127.0.0.1:1/ws", "mesh_id": "Mesh0123456789abcdefghijABCDEFGH", "member_id": "m",
            "secret_key": KeyPair.generate().secret_hex, "root_key": secrets.token_urlsafe(32),
            "default_encryption": "hkdf"}  # the HKDF tests choose v3 explicitly; auto is tested below
    data.update(over)
    return MeshConfig(**data)


def test_matches_vectors(topic_key_vectors):
    v = topic_key_vectors["topic_keys"][0]
    ring = KeyRing.from_configs({"m": _cfg(root_key=v["root_key"], mesh_id=v["mesh_id"])})
    body = topic_key_vectors["body_v3"]
    assert ring.open("m", v["topic_id"], "t", body["nonce_b64"], body["ciphertext_b64"], 3) == body["plaintext_utf8"]


def test_seal_open_v3_and_repr_has_no_keys():
    cfg = _cfg()
    ring = KeyRing.from_configs({"m": cfg})
    nonce, ct, bv = ring.seal("m", TOPIC, "general", "hi ✓")
    assert bv == 3 and len(crypto.unb64(nonce)) == 24
    assert ring.open("m", TOPIC, "general", nonce, ct, 3) == "hi ✓"
    # another topic's key does not open it
    assert ring.open("m", "U" * 32, "other", nonce, ct, 3) is None
    key = crypto.derive_topic_key(crypto.unb64url(cfg.root_key.get_secret_value()), cfg.mesh_id, TOPIC, 0)
    assert key.hex() not in repr(ring) and cfg.root_key.get_secret_value() not in repr(ring)
    assert crypto.secretbox_open(nonce, ct, key) == "hi ✓"


def test_rotation_old_epoch_still_decrypts():
    root = secrets.token_urlsafe(32)
    old = KeyRing.from_configs({"m": _cfg(root_key=root)})
    n0, c0, _ = old.seal("m", TOPIC, "ops", "from epoch 0")
    new = KeyRing.from_configs({"m": _cfg(root_key=root, topics={"ops": {"epoch": 1, "accept_epochs": [0]}})})
    n1, c1, _ = new.seal("m", TOPIC, "ops", "from epoch 1")
    assert new.open("m", TOPIC, "ops", n0, c0, 3) == "from epoch 0"
    assert new.open_detailed("m", TOPIC, "ops", n0, c0, 3).epoch == 0
    assert new.open("m", TOPIC, "ops", n1, c1, 3) == "from epoch 1"
    # a ring still on epoch 0 cannot read epoch 1, and says why
    res = old.open_detailed("m", TOPIC, "ops", n1, c1, 3)
    assert res.text is None and res.reason.startswith("undecryptable") and "epoch" in res.reason
    # without accept_epochs the old epoch is no longer read
    strict = KeyRing.from_configs({"m": _cfg(root_key=root, topics={"ops": {"epoch": 1}})})
    assert strict.open("m", TOPIC, "ops", n0, c0, 3) is None


def test_plaintext_topic_and_strict_v1():
    ring = KeyRing.from_configs({"m": _cfg(topics={"pub": {"encryption": "plaintext"}})})
    nonce, ct, bv = ring.seal("m", TOPIC, "pub", "plain ✓")
    assert bv == 1 and crypto.unb64(ct).decode() == "plain ✓"
    assert ring.open("m", TOPIC, "pub", nonce, ct, 1) == "plain ✓"
    assert ring.open("m", TOPIC, "pub", "", crypto.b64(b"\xff\xfe"), 1) is None
    assert ring.open("m", TOPIC, "pub", "", "not base64!!", 1) is None
    assert ring.mode("m", TOPIC, "pub") == "plaintext"


def test_separate_secret_root_key_holder_cannot_decrypt():
    root = secrets.token_urlsafe(32)
    side = secrets.token_urlsafe(32)
    insider = KeyRing.from_configs({"m": _cfg(root_key=root, topics={"board": {"key_secret": side}})})
    root_only = KeyRing.from_configs({"m": _cfg(root_key=root)})
    nonce, ct, bv = insider.seal("m", TOPIC, "board", "secret plan")
    assert bv == 3
    assert insider.open("m", TOPIC, "board", nonce, ct, 3) == "secret plan"
    assert root_only.open("m", TOPIC, "board", nonce, ct, 3) is None
    # and a mesh-level key_secret applies to every topic
    mesh_wide = KeyRing.from_configs({"m": _cfg(root_key=root, key_secret=side)})
    n2, c2, _ = mesh_wide.seal("m", TOPIC, "any", "x")
    assert root_only.open("m", TOPIC, "any", n2, c2, 3) is None
    assert mesh_wide.open("m", TOPIC, "any", n2, c2, 3) == "x"


def test_v2_without_key_is_undecryptable_and_with_provider_opens():
    ring = KeyRing.from_configs({"m": _cfg()})
    key = secrets.token_bytes(32)
    nonce, ct = crypto.secretbox_seal("v2 body", key)
    res = ring.open_detailed("m", TOPIC, "t", nonce, ct, 2)
    assert res.text is None and res.reason.startswith("undecryptable") and "bodyVersion 2" in res.reason

    class Provider:
        def topic_key(self, mesh, topic_id):
            return key if topic_id == TOPIC else None

    ring.set_sealed_key_provider(Provider())
    assert ring.open("m", TOPIC, "t", nonce, ct, 2) == "v2 body"
    assert ring.try_all_topic_keys("m", nonce, ct, [("X" * 32, "x"), (TOPIC, "t")]) == (TOPIC, "v2 body")
    assert ring.open_detailed("m", TOPIC, "t", nonce, ct, 7).reason == "undecryptable: unknown bodyVersion 7"


def test_try_all_topic_keys_and_missing_key():
    ring = KeyRing.from_configs({"m": _cfg(topics={"b": {"epoch": 1, "accept_epochs": [0]}})})
    old = KeyRing.from_configs({"m": ring._meshes["m"].cfg.model_copy(update={"topics": {}})})
    nonce, ct, _ = old.seal("m", "B" * 32, "b", "old epoch row")
    assert ring.try_all_topic_keys("m", nonce, ct, [("A" * 32, "a"), ("B" * 32, "b")]) == ("B" * 32, "old epoch row")
    assert ring.try_all_topic_keys("m", nonce, ct, [("A" * 32, "a")]) is None
    assert ring.try_all_topic_keys("nope", nonce, ct, [("B" * 32, "b")]) is None
    nokey = KeyRing.from_configs({"m": _cfg(root_key=None)})
    with pytest.raises(KeyRingError, match="neither root_key nor key_secret"):
        nokey.seal("m", TOPIC, "t", "x")
    assert "no root_key" in nokey.open_detailed("m", TOPIC, "t", nonce, ct, 3).reason
    with pytest.raises(KeyRingError, match="no mesh named"):
        ring.seal("zzz", TOPIC, "t", "x")


def test_auto_is_the_default_and_picks_v1_or_v2_per_topic():
    """``auto`` (the default): v1 without REST or where the topic is unencrypted, v2 where the sealed key
    is held, and a transient refusal (never plaintext) while an encrypted topic's key is not held."""
    from claudemesh_gateway.keys import PENDING, SEALED, UNENCRYPTED, SealedKeyStatus

    bare = MeshConfig(broker_url="ws://127.0.0.1:1/ws", mesh_id="M" * 32, member_id="m",
                      secret_key=KeyPair.generate().secret_hex)
    assert bare.default_encryption == "auto" and bare.topic_settings("x").encryption == "auto"
    cfg = _cfg(default_encryption="auto")
    ring = KeyRing.from_configs({"m": cfg})
    nonce, ct, bv = ring.seal("m", TOPIC, "t", "no REST configured")     # no provider: v1, readable upstream
    assert bv == 1 and crypto.v1_decode(ct) == "no REST configured"
    key = secrets.token_bytes(32)
    states = {TOPIC: SealedKeyStatus(SEALED), "U" * 32: SealedKeyStatus(UNENCRYPTED),
              "P" * 32: SealedKeyStatus(PENDING, "key_not_sealed_for_member")}

    class Provider:
        def topic_key(self, mesh, topic_id):
            return key if topic_id == TOPIC else None

        def topic_status(self, mesh, topic_id):
            return states[topic_id]

    ring.set_sealed_key_provider(Provider(), mesh="m")
    nonce, ct, bv = ring.seal("m", TOPIC, "t", "sealed ✓")
    assert bv == 2 and crypto.secretbox_open(nonce, ct, key) == "sealed ✓"
    assert ring.seal("m", "U" * 32, "u", "legacy topic")[2] == 1
    with pytest.raises(KeyRingError, match="key_not_sealed_for_member") as info:
        ring.seal("m", "P" * 32, "p", "must not leak")
    assert info.value.transient and "must not leak" not in str(info.value)
    # hkdf and plaintext stay explicit choices; ingest opens v1, v2 and v3 whatever the sending mode
    hk = KeyRing.from_configs({"m": _cfg(topics={"h": {"encryption": "hkdf"}, "p": {"encryption": "plaintext"}})})
    hk.set_sealed_key_provider(Provider(), mesh="m")
    n3, c3, bv3 = hk.seal("m", TOPIC, "h", "v3")
    assert bv3 == 3 and hk.open("m", TOPIC, "p", n3, c3, 3) == "v3"
    assert hk.seal("m", TOPIC, "p", "v1")[2] == 1
    n2, c2 = crypto.secretbox_seal("v2 row", key)
    assert hk.open("m", TOPIC, "p", n2, c2, 2) == "v2 row"
    # a provider for another mesh does not serve this one
    other = KeyRing.from_configs({"m": cfg})
    other.set_sealed_key_provider(Provider(), mesh="elsewhere")
    assert other.seal("m", TOPIC, "t", "x")[2] == 1 and other.open("m", TOPIC, "t", n2, c2, 2) is None


def test_topic_table_without_encryption_inherits_and_key_secret_means_hkdf():
    side = secrets.token_urlsafe(32)
    cfg = _cfg(default_encryption="auto", topics={"ops": {"epoch": 2}, "board": {"key_secret": side}})
    assert cfg.topic_settings("ops").encryption == "auto" and cfg.topic_settings("ops").epoch == 2
    assert cfg.topic_settings("board").encryption == "hkdf"
    mesh_wide = MeshConfig(broker_url="ws://127.0.0.1:1/ws", mesh_id="M" * 32, member_id="m",
                           secret_key=KeyPair.generate().secret_hex, key_secret=side)
    assert mesh_wide.topic_settings("any").encryption == "hkdf"             # a mesh key_secret: v3 everywhere
