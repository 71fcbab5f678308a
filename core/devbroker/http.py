"""HTTP side of the dev broker: ``GET /health``, ``POST /join`` (A.14, B.47), ``POST /hook/set-status``."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from claudemesh_gateway.mesh import crypto

from . import delivery
from .model import Member
from .ratelimit import TokenBuckets
from .util import HEX64_ANY, new_id, now_ms

if TYPE_CHECKING:
    from .broker import DevBroker

log = logging.getLogger(__name__)

BROKER_KEY: web.AppKey[Any] = web.AppKey("claudemesh_devbroker")
HOOK_BUCKETS_KEY: web.AppKey[Any] = web.AppKey("claudemesh_devbroker_hook_buckets")
REQUIRED = "invite_token, invite_payload, peer_pubkey, display_name required"


def _fail(error: str, status: int = 400) -> web.Response:
    return web.json_response({"ok": False, "error": error}, status=status)


async def _read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON; ``web.HTTPRequestEntityTooLarge``-style 413 is returned by the caller."""
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise _TooLarge
    return json.loads(body.decode("utf-8"))


class _TooLarge(Exception):
    pass


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "broker": "claudemesh-gateway dev-broker"})


def join_mesh(b: DevBroker, data: Any) -> tuple[int, dict[str, Any]]:
    """B.47 in order: fields, pubkey shape, signature, mesh, owner, invite, mesh/revoked/expiry/uses, member."""
    if not isinstance(data, dict):
        return 400, {"ok": False, "error": REQUIRED}
    token, payload = data.get("invite_token"), data.get("invite_payload")
    peer_pubkey, display_name = data.get("peer_pubkey"), data.get("display_name")
    if not token or not isinstance(payload, dict) or not peer_pubkey or not display_name:
        return 400, {"ok": False, "error": REQUIRED}
    if not isinstance(peer_pubkey, str) or not HEX64_ANY.match(peer_pubkey):
        return 400, {"ok": False, "error": "peer_pubkey must be 64 hex chars (32 bytes)"}
    try:
        ok = crypto.verify_hex(str(payload["owner_pubkey"]), crypto.canonical_invite(payload),
                               str(payload["signature"]))
    except KeyError:
        ok = False
    if not ok:
        return 400, {"ok": False, "error": "invite_bad_signature"}
    mesh = b.store.meshes.get(payload.get("mesh_id"))
    if mesh is None:
        return 400, {"ok": False, "error": "mesh_not_found"}
    if not mesh.owner_pubkey:
        return 400, {"ok": False, "error": "mesh_missing_owner_key"}
    if payload.get("owner_pubkey") != mesh.owner_pubkey:
        return 400, {"ok": False, "error": "invite_owner_mismatch"}
    invite = b.store.invites.get(token) if isinstance(token, str) else None
    if invite is None and isinstance(token, str) and b.store.merge_disk_invites():
        invite = b.store.invites.get(token)
    if invite is None:
        return 400, {"ok": False, "error": "invite_not_found"}
    if invite.mesh_id != mesh.id:
        return 400, {"ok": False, "error": "invite_mesh_mismatch"}
    if invite.revoked_at is not None:
        return 400, {"ok": False, "error": "invite_revoked"}
    if invite.expires_at <= time.time():
        return 400, {"ok": False, "error": "invite_expired"}
    if invite.used_count >= invite.max_uses:
        return 400, {"ok": False, "error": "invite_exhausted"}
    pubkey = peer_pubkey.lower()
    existing = b.store.member_by_pubkey(mesh.id, pubkey)
    if existing is not None:
        return 200, {"ok": True, "memberId": existing.id, "alreadyMember": True}
    preset = invite.preset or {}
    member = Member(
        id=new_id(), mesh_id=mesh.id, peer_pubkey=pubkey,
        display_name=str(preset.get("display_name") or display_name), role=invite.role,
        role_tag=preset.get("role_tag"), default_groups=list(preset.get("groups") or []),
        message_mode=preset.get("message_mode"), created_at=now_ms())
    b.store.members[member.id] = member
    invite.used_count += 1
    b.dirty()
    log.info("join: %s joined mesh %s as %s", member.display_name, mesh.slug, member.role)
    return 200, {"ok": True, "memberId": member.id}


async def join(request: web.Request) -> web.Response:
    b: DevBroker = request.app[BROKER_KEY]
    try:
        data = await _read_json(request, b.config.max_message_bytes)
    except _TooLarge:
        return _fail("payload too large", 413)
    except (ValueError, UnicodeDecodeError):
        return _fail(REQUIRED)
    status, body = join_mesh(b, data)
    return web.json_response(body, status=status)


async def hook_set_status(request: web.Request) -> web.Response:
    """Claude Code hook emulation: ``{status, session_id? | pubkey? | cwd?}`` sets the computed status of the
    matching presences and triggers a drain for each (a B.30 drain trigger)."""
    b: DevBroker = request.app[BROKER_KEY]
    buckets: TokenBuckets = request.app[HOOK_BUCKETS_KEY]
    if not buckets.take(request.remote or "?"):
        return _fail("rate_limited", 429)
    try:
        data = await _read_json(request, b.config.max_message_bytes)
    except _TooLarge:
        return _fail("payload too large", 413)
    except (ValueError, UnicodeDecodeError):
        return _fail("invalid JSON")
    if not isinstance(data, dict) or data.get("status") not in ("idle", "working", "dnd"):
        return _fail("status must be idle, working or dnd")
    sid = data.get("session_id") or data.get("sessionId")
    pubkey, cwd = data.get("pubkey"), data.get("cwd")
    if not (sid or pubkey or cwd):
        return _fail("session_id, pubkey or cwd required")
    matched = [p for p in b.registry.entries.values()
               if (sid and p.session_id == sid) or (pubkey and pubkey in (p.member_pubkey, p.session_pubkey))
               or (cwd and p.cwd == cwd)]
    for p in matched:
        if data["status"] == "dnd":
            p.manual_status = "dnd"
        else:
            p.forced_status = None if data["status"] == "idle" else data["status"]
            if p.manual_status == "dnd":
                p.manual_status = None
        await delivery.drain(b, p)
    return web.json_response({"ok": True, "matched": len(matched)})


def routes(b: DevBroker) -> list[web.RouteDef]:
    return [
        web.get("/health", health),
        web.get("/health/ready", health),
        web.post("/join", join),
        web.post("/hook/set-status", hook_set_status),
    ]
