"""Library functions behind the mesh CLI commands (``keygen``, ``enroll``, ``mesh peers|send|tail``).

Every tool that connects uses an EPHEMERAL session identity (fresh session keypair,
``sessionId`` ``gw-cli-<uuid>``, in-memory kv), never the running gateway's persisted one,
so it can run beside the gateway without taking its session over (``session_replaced``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from ..errors import DeliveryError, MeshError
from ..files import make_private_dir
from . import crypto
from .aio import with_timeout
from .config import PRODUCTION_BROKER_HOST, http_url_for
from .peer import MeshPeer
from .poller import TopicPoller
from .state import MemoryKV
from .types import MeshInbound

__all__ = [
    "JOIN_ERRORS",
    "EnrollError",
    "enroll",
    "keygen",
    "peers",
    "send",
    "send_dm",
    "send_topic",
    "tail",
    "tail_rows",
]

_SLUG = re.compile(r"[^a-z0-9_-]+")


class EnrollError(MeshError):
    """Enrollment failed; the message says why in one line (no secrets)."""


# POST /join 400 error strings (mesh-protocol.md A.14) -> what the operator should know
JOIN_ERRORS = {
    "invite_token, invite_payload, peer_pubkey, display_name required":
        "broker says the join request lacks a field (invite_token, invite_payload, peer_pubkey, display_name)",
    "peer_pubkey must be 64 hex chars (32 bytes)": "broker rejected our public key shape (must be 64 hex chars)",
    "invite_bad_signature": "broker says the invite signature is invalid (was the link altered?)",
    "mesh_not_found": "the invite's mesh does not exist on this broker (wrong broker, or the mesh was deleted)",
    "mesh_missing_owner_key": "the mesh has no owner key on the broker; ask the mesh owner",
    "invite_owner_mismatch": "the invite was not signed by this mesh's owner",
    "invite_not_found": "the broker does not know this invite (revoked and deleted, or minted elsewhere)",
    "invite_mesh_mismatch": "the invite belongs to another mesh",
    "invite_revoked": "the invite was revoked; ask for a new one",
    "invite_expired": "the invite has expired; ask for a new one",
    "invite_exhausted": "the invite was already used up (single-use); ask for a new one",
    "member_insert_failed": "the broker could not create the member; try again or ask the mesh owner",
}


# -- keys -----------------------------------------------------------------------------------------------------------
def _write_key_file(path: Path, pair: crypto.KeyPair) -> None:
    """Create ``path`` with mode 0600; refuse to overwrite anything."""
    path = path.expanduser()
    make_private_dir(path.parent)  # a directory we create for it is 0700
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MeshError(f"key file {path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"# claudemesh member key (ed25519, libsodium seed||pubkey hex)\n# pubkey {pair.public_hex}\n")
        fh.write(pair.secret_hex + "\n")
    os.chmod(path, 0o600)


def keygen(path: str | Path | None = None) -> dict[str, str]:
    """A new member identity. With ``path``: written there (0600, never overwritten) and
    ``{"pubkey", "secret_key_file"}`` returned; without: ``{"pubkey", "secret_key"}``."""
    pair = crypto.KeyPair.generate()
    if path is None:
        return {"pubkey": pair.public_hex, "secret_key": pair.secret_hex}
    _write_key_file(Path(path), pair)
    return {"pubkey": pair.public_hex, "secret_key_file": str(Path(path).expanduser())}


# -- enrollment -----------------------------------------------------------------------------------------------------
def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def enroll(invite_or_link: str, *, display_name: str = "claudemesh-gateway", key_path: str | Path | None = None,
                 name: str | None = None, http: aiohttp.ClientSession | None = None, timeout: float = 15.0,
                 now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Join a mesh with a v1 invite (A.14): verify it, mint a member keypair, ``POST /join``.

    Returns ``{"name", "already_member", "config": {...[mesh.<name>] values...}, "toml"}``; the
    config includes the root key (needed for bodyVersion 3) and either ``secret_key`` or
    ``secret_key_file`` (when ``key_path`` is given; the file is removed again if the join fails)."""
    try:
        token, payload = crypto.decode_invite(invite_or_link)
        crypto.verify_invite(payload, now())
    except ValueError as exc:
        raise EnrollError(f"invite: {exc}") from None
    if payload.get("role") not in ("member", "admin"):
        raise EnrollError(f"invite: unknown role {payload.get('role')!r}")
    broker_url = str(payload["broker_url"]).rstrip("/")
    if not broker_url.endswith("/ws"):
        broker_url += "/ws"
    if not broker_url.startswith(("ws://", "wss://")):
        raise EnrollError(f"invite: broker_url must be ws:// or wss:// (got {broker_url.split('://')[0]}://)")
    pair = crypto.KeyPair.generate()
    if key_path is not None:
        _write_key_file(Path(key_path), pair)
    try:
        body = await _post_join(http_url_for(broker_url), {
            "invite_token": token, "invite_payload": payload, "peer_pubkey": pair.public_hex,
            "display_name": display_name,
        }, http=http, timeout=timeout)
    except BaseException:
        if key_path is not None:
            with contextlib.suppress(OSError):
                Path(key_path).expanduser().unlink()  # noqa: ASYNC240 - a one-shot CLI, nothing else runs
        raise
    table_name = name or _SLUG.sub("-", str(payload.get("mesh_slug") or "mesh").lower()).strip("-") or "mesh"
    config: dict[str, Any] = {
        "broker_url": broker_url, "mesh_id": payload["mesh_id"], "member_id": str(body["memberId"]),
        "pubkey": pair.public_hex, "root_key": payload["mesh_root_key"], "display_name": display_name,
    }
    if key_path is not None:
        config["secret_key_file"] = str(Path(key_path).expanduser())  # noqa: ASYNC240 - no I/O
    else:
        config["secret_key"] = pair.secret_hex
    lines = [f"[mesh.{table_name}]", *(f"{k} = {_toml_str(str(v))}" for k, v in config.items())]
    if PRODUCTION_BROKER_HOST not in broker_url:  # the hosted broker's web app is known; others must be named
        lines.append('# rest = { url = "https://..." }  # the web app serving /api/v1 for this broker: '
                     'sealed topic keys (bodyVersion 2)')
    toml = "\n".join(lines) + "\n"
    return {"name": table_name, "already_member": bool(body.get("alreadyMember")), "config": config, "toml": toml}


async def _post_join(base: str, body: dict[str, Any], *, http: aiohttp.ClientSession | None,
                     timeout: float) -> dict[str, Any]:
    own = http is None
    session = http or aiohttp.ClientSession()
    try:
        async with session.post(f"{base}/join", json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            try:
                data = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                data = None
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise EnrollError(f"cannot reach the broker at {base} ({type(exc).__name__})") from None
    finally:
        if own:
            await session.close()
    if not isinstance(data, dict):
        raise EnrollError(f"broker answered /join with HTTP {status} and no JSON body")
    if status == 200 and data.get("ok") and data.get("memberId"):
        return data
    error = str(data.get("error") or "")
    if status == 400:
        raise EnrollError(f"join refused: {JOIN_ERRORS.get(error, error or 'no reason given')} ({error})")
    if status == 413:
        raise EnrollError("join refused: request too large for the broker (413)")
    raise EnrollError(f"join failed: HTTP {status}: {error or 'no reason given'}")


# -- connected tools ----------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _connected(mesh_name: str, cfg: Any, timeout: float, on_message: Any = None) -> AsyncIterator[MeshPeer]:
    peer = MeshPeer(mesh_name, cfg, kv=MemoryKV(), identity="cli", on_message=on_message)
    await peer.start()
    try:
        await peer.wait_connected(timeout)
        yield peer
    finally:
        await peer.stop()


def _peer_dict(p: Any) -> dict[str, Any]:
    return {"pubkey": p.pubkey, "memberPubkey": p.member_pubkey, "displayName": p.display_name, "status": p.status,
            "peerRole": p.peer_role, "peerType": p.peer_type, "groups": list(p.groups), "sessionId": p.session_id,
            "self": p.is_self}


async def peers(mesh_name: str, cfg: Any, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The mesh roster (``list_peers``), our own ephemeral presence marked ``self``."""
    async with _connected(mesh_name, cfg, timeout) as peer:
        return [_peer_dict(p) for p in await peer.peers(refresh=True)]


async def send_dm(mesh_name: str, cfg: Any, to: str, text: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """DM a peer by pubkey or display name; fails at once if it is not connected."""
    async with _connected(mesh_name, cfg, timeout) as peer:
        target = await peer.resolve_peer(to)
        try:
            qid = await peer.send_dm(target.pubkey, text, retry_window=0)
        except DeliveryError as exc:
            raise MeshError(str(exc)) from None
        return {"to": target.pubkey, "name": target.display_name or None, "messageId": qid}


async def send_topic(mesh_name: str, cfg: Any, topic: str, text: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Post to a topic (encrypted per the config); returns the topic message id."""
    async with _connected(mesh_name, cfg, timeout) as peer:
        try:
            mid = await peer.post_topic(topic, text)
        except DeliveryError as exc:
            raise MeshError(str(exc)) from None
        return {"topic": topic, "id": mid}


async def send(mesh_name: str, cfg: Any, text: str, *, topic: str | None = None, to: str | None = None,
               timeout: float = 10.0) -> dict[str, Any]:
    """``send_topic`` or ``send_dm``: exactly one of ``topic`` / ``to``."""
    if (topic is None) == (to is None):
        raise MeshError("send: give exactly one of topic or to")
    if topic is not None:
        return await send_topic(mesh_name, cfg, topic, text, timeout=timeout)
    assert to is not None
    return await send_dm(mesh_name, cfg, to, text, timeout=timeout)


def _row(item: MeshInbound) -> dict[str, Any]:
    created = datetime.fromtimestamp(item.created_at / 1000, UTC).isoformat(timespec="milliseconds")
    return {"id": item.id, "sender": item.sender_name or item.sender_pubkey[:12], "text": item.text,
            "createdAt": created.replace("+00:00", "Z")}


async def tail_rows(mesh_name: str, cfg: Any, topic: str, *, count: int | None = None, timeout: float | None = None,
                    backfill: int = 0, connect_timeout: float = 10.0) -> AsyncIterator[dict[str, Any]]:
    """Yield ``{id, sender, text, createdAt}`` for each new row of ``topic`` (our own member's
    included), oldest first, until ``count`` rows or ``timeout`` seconds. ``backfill`` rows of
    history come first."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_row(item: MeshInbound) -> None:
        await queue.put(_row(item))

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async with _connected(mesh_name, cfg, connect_timeout) as peer:
        t = await peer.resolve_topic(topic)
        poller = TopicPoller(peer, t, on_row, include_own=True, persist=False, backfill=backfill)
        poller.start()
        try:
            n = 0
            while count is None or n < count:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return
                try:
                    row = await with_timeout(queue.get(), left)
                except TimeoutError:
                    return
                n += 1
                yield row
        finally:
            await poller.stop()


async def tail(mesh_name: str, cfg: Any, topic: str, *, count: int | None = None, timeout: float | None = None,
               on_row: Callable[[dict[str, Any]], Any] | None = None, backfill: int = 0) -> list[dict[str, Any]]:
    """Run :func:`tail_rows`, calling ``on_row`` for each row; returns the rows seen."""
    rows = []
    async for row in tail_rows(mesh_name, cfg, topic, count=count, timeout=timeout, backfill=backfill):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
