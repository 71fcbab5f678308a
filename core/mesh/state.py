"""Small persisted state for the mesh peer: key-value stores and the session identity (A.6).

``kv`` is any object with ``async kv_get(ns, key)`` / ``async kv_set(ns, key, value)``:
the gateway's Store, :class:`MemoryKV` (tests, tools) or :class:`JsonFileKV` (CLI helpers).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Protocol

from ..files import make_private_dir
from ..logconfig import register_secret
from .crypto import KeyPair

__all__ = ["KV", "KV_NAMESPACE", "JsonFileKV", "MemoryKV", "SessionIdentity", "load_session_identity"]

log = logging.getLogger(__name__)

KV_NAMESPACE = "mesh"


class KV(Protocol):
    async def kv_get(self, namespace: str, key: str) -> Any | None: ...
    async def kv_set(self, namespace: str, key: str, value: Any) -> None: ...


class MemoryKV:
    """In-memory kv (values deep-copied, like a real store round-trip)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], Any] = {}

    async def kv_get(self, namespace: str, key: str) -> Any | None:
        return copy.deepcopy(self.data.get((namespace, key)))

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        self.data[(namespace, key)] = copy.deepcopy(value)

    async def kv_delete(self, namespace: str, key: str) -> None:
        self.data.pop((namespace, key), None)

    async def kv_items(self, namespace: str) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for (ns, k), v in self.data.items() if ns == namespace}


class JsonFileKV(MemoryKV):
    """A kv persisted to one JSON file (mode 0600), rewritten atomically on each set. For CLI tools."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock = asyncio.Lock()
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"kv file {self.path} is not readable JSON ({exc})") from None
            for ns, table in (raw or {}).items():
                for key, value in table.items():
                    self.data[(ns, key)] = value

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        async with self._lock:
            await super().kv_set(namespace, key, value)
            self._flush()

    async def kv_delete(self, namespace: str, key: str) -> None:
        async with self._lock:
            await super().kv_delete(namespace, key)
            self._flush()

    def _flush(self) -> None:
        out: dict[str, dict[str, Any]] = {}
        for (ns, key), value in self.data.items():
            out.setdefault(ns, {})[key] = value
        make_private_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".kv-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(out, fh, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class SessionIdentity:
    """The session keypair and ``sessionId`` reused on every connect (A.6)."""

    keypair: KeyPair
    session_id: str
    persisted: bool

    @property
    def pubkey(self) -> str:
        return self.keypair.public_hex

    def __repr__(self) -> str:
        return f"<SessionIdentity {self.session_id} pubkey={self.pubkey[:12]}… persisted={self.persisted}>"


def _register(pair: KeyPair) -> None:
    secret = pair.secret_hex
    register_secret(secret)
    register_secret(secret[:64])  # the seed alone is the secret half


def _identity_key(mesh: str) -> str:
    return f"{mesh}:session"


async def load_session_identity(kv: KV, mesh: str, member_pubkey: str, *, ephemeral: bool = False) -> SessionIdentity:
    """The persisted session identity of ``mesh`` (created and saved on first use).

    ``ephemeral`` (CLI tools): a fresh keypair and ``gw-cli-<uuid>``, never saved, so a
    tool can run beside the gateway without taking over its session (``session_replaced``).
    A saved identity made for another member is replaced (and logged)."""
    if ephemeral:
        return SessionIdentity(KeyPair.generate(), f"gw-cli-{uuid.uuid4()}", persisted=False)
    saved = await kv.kv_get(KV_NAMESPACE, _identity_key(mesh))
    if isinstance(saved, dict) and saved.get("member_pubkey") == member_pubkey:
        try:
            pair = KeyPair.from_secret_hex(str(saved["session_secret"]))
            sid = str(saved["session_id"])
            if sid:
                _register(pair)  # the redaction filter scrubs it from every log line
                return SessionIdentity(pair, sid, persisted=True)
        except (KeyError, ValueError):
            log.warning("mesh %s: stored session identity is unreadable; minting a new one", mesh)
    elif saved is not None:
        log.warning("mesh %s: stored session identity belongs to another member key; minting a new one", mesh)
    pair = KeyPair.generate()
    _register(pair)  # before the kv_set below can show up in any log line
    ident = SessionIdentity(pair, f"gw-{uuid.uuid4()}", persisted=True)
    await kv.kv_set(KV_NAMESPACE, _identity_key(mesh), {
        "session_secret": pair.secret_hex, "session_id": ident.session_id, "member_pubkey": member_pubkey,
    })
    log.info("mesh %s: new session identity %s (pubkey %s…)", mesh, ident.session_id, pair.public_hex[:12])
    return ident
