"""The key ring: per-topic body keys, derived centrally (mesh-protocol.md A.13a).

``topic_key = HKDF-SHA256(IKM, "claudemesh/topic-key/v1", "mesh:<id>|topic:<id>|epoch:<n>")``
where IKM is the mesh root key, or a separate secret configured for the mesh or for one
topic (then a root-key holder alone cannot read that topic). Keys are derived on first
use and cached in memory only: nothing here logs a key, stores one, or puts one in an
exception or a repr.

bodyVersion 1 is base64 plaintext, 3 is ours (secretbox with the HKDF key), 2 is the
broker's sealed random topic key, opened only when a :class:`SealedKeyProvider` holds it
(``claudemesh_gateway.mesh.sealed.SealedTopicKeys`` fetches it over REST, A.13).

Sending mode per topic (``encryption``): ``auto`` (the default) seals v2 where the topic has a
sealed key and REST is configured, v1 where the topic is unencrypted (or REST is not configured);
``hkdf`` seals v3; ``plaintext`` v1. Opening does not depend on the mode: v1, v2 and v3 are all read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .mesh import crypto

if TYPE_CHECKING:
    from .mesh.config import MeshConfig

__all__ = ["ERROR", "MODES", "PENDING", "SEALED", "UNENCRYPTED", "UNKNOWN", "KeyRing", "KeyRingError", "OpenResult",
           "SealedKeyProvider", "SealedKeyStatus", "reader_note"]

log = logging.getLogger(__name__)

BODY_PLAINTEXT = 1
BODY_SEALED = 2
BODY_HKDF = 3
MODES = ("auto", "hkdf", "plaintext")

# states of a topic's sealed key (SealedKeyStatus.state)
SEALED = "sealed"            # the v2 key is held
UNENCRYPTED = "unencrypted"  # the topic has no sealed key (topic_unencrypted): v1
PENDING = "pending"          # encrypted, but not sealed for our member yet (key_not_sealed_for_member)
ERROR = "error"              # REST failed (no issuer, auth, network): the reason is in ``detail``
UNKNOWN = "unknown"          # not fetched yet


class KeyRingError(ValueError):
    """A body cannot be sealed (unknown mesh, no key configured). The message names no key.
    ``transient``: it may work later (a key not sealed for us yet, REST unreachable)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclasses.dataclass(frozen=True, slots=True)
class SealedKeyStatus:
    """Where a topic's sealed key stands: ``state`` is one of SEALED, UNENCRYPTED, PENDING, ERROR, UNKNOWN."""

    state: str
    detail: str = ""


class SealedKeyProvider(Protocol):
    """bodyVersion 2 interop: the broker's sealed per-topic key, opened with our member key.

    A provider may also offer ``topic_status(mesh, topic_id) -> SealedKeyStatus``; without it, a
    topic counts as sealed when ``topic_key`` returns a key and as unencrypted otherwise."""

    def topic_key(self, mesh: str, topic_id: str) -> bytes | None: ...


def reader_note(body_version: int) -> str:
    """Who can read a topic post of ``body_version`` (for ``check`` and the docs)."""
    return {
        BODY_PLAINTEXT: "readable by every upstream client (CLI, web chat), every mesh member and the broker "
                        "operator: base64, not encrypted",
        BODY_SEALED: "readable by the CLI and every topic member holding the sealed key; not by the broker operator "
                     "or mere invite holders; the upstream web chat shows no text for it",
        BODY_HKDF: "readable only by claudemesh-gateway and agents that derive the HKDF key (every holder of the "
                   "root key, so invite holders and the broker operator too); upstream clients show "
                   "[decrypt failed]",
    }[body_version]


@dataclasses.dataclass(frozen=True, slots=True)
class OpenResult:
    """``text`` on success; otherwise ``reason`` says why (``undecryptable: ...``)."""

    text: str | None
    reason: str = ""
    epoch: int | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


@dataclasses.dataclass(slots=True, repr=False)
class _MeshKeys:
    mesh_id: str
    root: bytes | None
    mesh_secret: bytes | None
    cfg: Any  # MeshConfig (topic_settings)
    topic_secrets: dict[str, bytes]


class KeyRing:
    """Derives, caches and applies topic keys for every configured mesh."""

    def __init__(self, sealed_provider: SealedKeyProvider | None = None) -> None:
        self._meshes: dict[str, _MeshKeys] = {}
        self._cache: dict[tuple[str, str, int, str], bytes] = {}
        self._sealed = sealed_provider
        self._sealed_by_mesh: dict[str, SealedKeyProvider] = {}

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Any, sealed_provider: SealedKeyProvider | None = None) -> KeyRing:
        return cls.from_configs(settings.mesh, sealed_provider)

    @classmethod
    def from_configs(cls, meshes: Mapping[str, MeshConfig],
                     sealed_provider: SealedKeyProvider | None = None) -> KeyRing:
        ring = cls(sealed_provider)
        for name, cfg in meshes.items():
            ring.add_mesh(name, cfg)
        return ring

    def add_mesh(self, name: str, cfg: MeshConfig) -> None:
        """Register (or replace, on reload) mesh ``name``; its cached keys are dropped."""
        from .mesh.config import decode_root_key

        def raw(secret: Any) -> bytes | None:
            return decode_root_key(secret.get_secret_value()) if secret is not None else None

        self._meshes[name] = _MeshKeys(
            mesh_id=cfg.mesh_id, root=raw(cfg.root_key), mesh_secret=raw(cfg.key_secret), cfg=cfg,
            topic_secrets={t: raw(tc.key_secret) for t, tc in cfg.topics.items() if tc.key_secret is not None},
        )
        self.forget(name)

    def set_sealed_key_provider(self, provider: SealedKeyProvider | None, mesh: str | None = None) -> None:
        """The bodyVersion 2 provider for every mesh, or (``mesh``) for that mesh only (it wins there)."""
        if mesh is None:
            self._sealed = provider
        elif provider is None:
            self._sealed_by_mesh.pop(mesh, None)
        else:
            self._sealed_by_mesh[mesh] = provider

    def sealed_provider(self, mesh: str) -> SealedKeyProvider | None:
        return self._sealed_by_mesh.get(mesh, self._sealed)

    def _sealed_key(self, mesh: str, topic_id: str) -> bytes | None:
        provider = self.sealed_provider(mesh)
        return provider.topic_key(mesh, topic_id) if provider is not None else None

    def sealed_status(self, mesh: str, topic_id: str) -> SealedKeyStatus | None:
        """The topic's sealed-key status, or None when no provider serves ``mesh`` (REST not configured)."""
        provider = self.sealed_provider(mesh)
        if provider is None:
            return None
        status = getattr(provider, "topic_status", None)
        if callable(status):
            return status(mesh, topic_id)
        return SealedKeyStatus(SEALED) if provider.topic_key(mesh, topic_id) is not None else SealedKeyStatus(
            UNENCRYPTED)

    def forget(self, mesh: str | None = None) -> None:
        """Drop cached derived keys (all, or one mesh's)."""
        if mesh is None:
            self._cache.clear()
        else:
            for k in [k for k in self._cache if k[0] == mesh]:
                del self._cache[k]

    def meshes(self) -> list[str]:
        return sorted(self._meshes)

    def __repr__(self) -> str:
        return f"<KeyRing meshes={sorted(self._meshes)} cached_keys={len(self._cache)}>"

    __str__ = __repr__

    # -- key selection ---------------------------------------------------------------------------------
    def _mesh(self, mesh: str) -> _MeshKeys:
        try:
            return self._meshes[mesh]
        except KeyError:
            raise KeyRingError(f"key ring: no mesh named {mesh!r} is configured") from None

    def mode(self, mesh: str, topic_id: str, topic_name: str | None = None) -> str:
        """The configured mode for this topic: ``"auto"``, ``"hkdf"`` or ``"plaintext"``."""
        return self._mesh(mesh).cfg.topic_settings(topic_name, topic_id).encryption

    def body_version(self, mesh: str, topic_id: str, topic_name: str | None = None) -> int:
        """The bodyVersion a post to this topic gets now (1, 2 or 3). Raises :class:`KeyRingError`
        (``transient``) when ``auto`` cannot decide yet: the topic is encrypted but its key is not
        held (not sealed for us yet, or REST failed), so neither v1 nor v2 would be right."""
        mode = self.mode(mesh, topic_id, topic_name)
        if mode == "plaintext":
            return BODY_PLAINTEXT
        if mode == "hkdf":
            return BODY_HKDF
        status = self.sealed_status(mesh, topic_id)
        if status is None or status.state == UNENCRYPTED:
            return BODY_PLAINTEXT
        if status.state == SEALED and self._sealed_key(mesh, topic_id) is not None:
            return BODY_SEALED
        shown = topic_name or topic_id
        if status.state == PENDING:
            raise KeyRingError(f"mesh {mesh}: topic {shown!r} is encrypted (sealed key, bodyVersion 2) but no member "
                               f"holding the key has sealed it for the gateway yet ({status.detail}); not posting "
                               f"in the clear, retrying later", transient=True)
        raise KeyRingError(f"mesh {mesh}: topic {shown!r}: the sealed topic key is not available "
                           f"({status.state}: {status.detail or 'not fetched yet'}); not posting, retrying later",
                           transient=True)

    def _ikm(self, mk: _MeshKeys, topic_id: str, topic_name: str | None) -> tuple[bytes | None, str]:
        for key in (topic_name, topic_id):
            if key and key in mk.topic_secrets:
                return mk.topic_secrets[key], "topic-secret"
        if mk.mesh_secret is not None:
            return mk.mesh_secret, "mesh-secret"
        return mk.root, "root"

    def _key(self, mesh: str, mk: _MeshKeys, topic_id: str, topic_name: str | None, epoch: int) -> bytes | None:
        ikm, source = self._ikm(mk, topic_id, topic_name)
        if ikm is None:
            return None
        ck = (mesh, topic_id, epoch, source)
        key = self._cache.get(ck)
        if key is None:
            key = crypto.derive_topic_key(ikm, mk.mesh_id, topic_id, epoch)
            self._cache[ck] = key
        return key

    def _epochs(self, mk: _MeshKeys, topic_id: str, topic_name: str | None) -> list[int]:
        tc = mk.cfg.topic_settings(topic_name, topic_id)
        return [tc.epoch, *[e for e in tc.accept_epochs if e != tc.epoch]]

    # -- seal / open --------------------------------------------------------------------------------------
    def seal(self, mesh: str, topic_id: str, topic_name: str | None, text: str) -> tuple[str, str, int]:
        """``(nonce_b64, ciphertext_b64, body_version)`` for a post to ``#<topic_id>``.

        Per :meth:`body_version`: v2 with the sealed topic key, v3 with the topic's current HKDF
        epoch, or v1. Raises :class:`KeyRingError` when the topic is encrypted but its key is not
        configured (hkdf) or not held (auto, ``transient``)."""
        mk = self._mesh(mesh)
        tc = mk.cfg.topic_settings(topic_name, topic_id)
        bv = self.body_version(mesh, topic_id, topic_name)
        if bv == BODY_PLAINTEXT:
            return crypto.b64(crypto.random_nonce()), crypto.v1_encode(text), BODY_PLAINTEXT
        if bv == BODY_SEALED:
            sealed = self._sealed_key(mesh, topic_id)
            if sealed is None:  # pragma: no cover - body_version checked it a moment ago
                raise KeyRingError(f"mesh {mesh}: the sealed key of {topic_name or topic_id!r} is gone", transient=True)
            nonce, ct = crypto.secretbox_seal(text, sealed)
            return nonce, ct, BODY_SEALED
        key = self._key(mesh, mk, topic_id, topic_name, tc.epoch)
        if key is None:
            raise KeyRingError(
                f"mesh {mesh}: topic {topic_name or topic_id!r} is encrypted (hkdf) but neither root_key nor "
                f"key_secret is configured; set one, or encryption = \"plaintext\" for this topic")
        nonce, ct = crypto.secretbox_seal(text, key)
        return nonce, ct, BODY_HKDF

    def open(self, mesh: str, topic_id: str, topic_name: str | None, nonce: str, ciphertext: str,
             body_version: int | None) -> str | None:
        """The plaintext, or None (see :meth:`open_detailed` for the reason)."""
        return self.open_detailed(mesh, topic_id, topic_name, nonce, ciphertext, body_version).text

    def open_detailed(self, mesh: str, topic_id: str, topic_name: str | None, nonce: str, ciphertext: str,
                      body_version: int | None) -> OpenResult:
        bv = BODY_PLAINTEXT if body_version is None else body_version
        if bv == BODY_PLAINTEXT:
            text = crypto.v1_decode(ciphertext or "")
            return OpenResult(text) if text is not None else OpenResult(
                None, "undecryptable: bodyVersion 1 body is not valid base64 UTF-8")
        if bv == BODY_HKDF:
            mk = self._mesh(mesh)
            for epoch in self._epochs(mk, topic_id, topic_name):
                key = self._key(mesh, mk, topic_id, topic_name, epoch)
                if key is None:
                    return OpenResult(None, "undecryptable: bodyVersion 3 but no root_key/key_secret is configured")
                text = crypto.secretbox_open(nonce, ciphertext, key)
                if text is not None:
                    return OpenResult(text, epoch=epoch)
            return OpenResult(None, "undecryptable: bodyVersion 3 body does not open with this topic's key "
                                    "(other key_secret, or an epoch missing from accept_epochs)")
        if bv == BODY_SEALED:
            key = self._sealed_key(mesh, topic_id)
            if key is None:
                return OpenResult(None, "undecryptable: bodyVersion 2 (broker-sealed topic key) and no sealed "
                                        "key is held for this topic")
            text = crypto.secretbox_open(nonce, ciphertext, key)
            return OpenResult(text) if text is not None else OpenResult(
                None, "undecryptable: bodyVersion 2 body does not open with the sealed topic key")
        return OpenResult(None, f"undecryptable: unknown bodyVersion {bv!r}")

    def try_all_topic_keys(self, mesh: str, nonce: str, ciphertext: str,
                           topics: Iterable[tuple[str, str | None]]) -> tuple[str, str] | None:
        """A.9 step 4: ``(topic_id, text)`` if any key of the given ``(topic_id, topic_name)``
        opens the body (v3 current epoch, then older epochs, then v2 sealed keys)."""
        mk = self._meshes.get(mesh)
        if mk is None:
            return None
        topics = list(topics)
        for topic_id, name in topics:
            for epoch in self._epochs(mk, topic_id, name):
                key = self._key(mesh, mk, topic_id, name, epoch)
                if key is None:
                    break
                text = crypto.secretbox_open(nonce, ciphertext, key)
                if text is not None:
                    return topic_id, text
        if self.sealed_provider(mesh) is not None:
            for topic_id, _name in topics:
                key = self._sealed_key(mesh, topic_id)
                if key is not None:
                    text = crypto.secretbox_open(nonce, ciphertext, key)
                    if text is not None:
                        return topic_id, text
        return None
