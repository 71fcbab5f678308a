"""The web app's REST ``/api/v1`` surface for sealed topic keys (spec A.13), and the WS API key verbs.

Upstream serves ``/api/v1`` from the web app, not the broker; the dev broker serves it on its own
HTTP port so tests and the example config exercise bodyVersion 2 with no accounts. Emulated:

- WS ``apikey_create`` / ``apikey_list`` / ``apikey_revoke`` (any member may mint, A.13).
- ``Authorization: Bearer cm_<b64url 32 bytes>``: matched by the 11-char prefix plus the SHA-256
  of the whole secret, never revoked or expired; ``admin`` implies every capability;
  ``topicScopes`` (names) or null. Auth errors are ``{code, message, status, timestamp, path}``.
- ``GET /api/v1/topics``, ``GET /api/v1/topics/:name/key``, ``GET .../pending-seals``,
  ``POST .../seal``, ``POST .../claim-key``, with the route-level error bodies
  (``{error, topic?, hint?}``) of packages/api/src/modules/mesh/v1-router.ts.

Only the hash of a key's secret is stored; no secret or topic key is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from claudemesh_gateway.mesh import crypto

from .model import ApiKey, Topic, TopicMemberKey
from .presence import Conn
from .util import iso, new_id, now_ms

if TYPE_CHECKING:
    from .broker import DevBroker

log = logging.getLogger(__name__)

CAPABILITIES = ("send", "read", "state_write", "admin")
PREFIX_LEN = 11
_BEARER = re.compile(r"^Bearer\s+(.+)$")


# -- keys -------------------------------------------------------------------------------------------

def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def mint_api_key(b: DevBroker, mesh_id: str, *, label: str, capabilities: list[str],
                 topic_scopes: list[str] | None = None, expires_at_ms: int | None = None,
                 issued_by_member_id: str | None = None) -> tuple[ApiKey, str]:
    """Store a new key and return ``(row, secret)``; the secret exists only in the return value."""
    secret = "cm_" + crypto.b64url(secrets.token_bytes(32))
    row = ApiKey(id=new_id(), mesh_id=mesh_id, label=label, prefix=secret[:PREFIX_LEN], secret_hash=_hash(secret),
                 capabilities=list(capabilities), topic_scopes=list(topic_scopes) if topic_scopes is not None else None,
                 issued_by_member_id=issued_by_member_id, created_at=now_ms(), expires_at=expires_at_ms)
    b.store.api_keys.append(row)
    b.dirty()
    return row, secret


def verify_bearer(b: DevBroker, secret: str) -> ApiKey | None:
    if not secret.startswith("cm_"):
        return None
    digest = _hash(secret)
    now = now_ms()
    for row in b.store.api_keys:
        if row.prefix != secret[:PREFIX_LEN] or row.revoked_at is not None:
            continue
        if row.expires_at is not None and row.expires_at < now:
            continue
        if hmac.compare_digest(row.secret_hash, digest):
            return row
    return None


def _parse_iso_ms(value: Any) -> int | None:
    if not isinstance(value, str):
        raise TypeError("expiresAt must be an ISO date string")
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def _key_view(row: ApiKey) -> dict[str, Any]:
    return {"id": row.id, "label": row.label, "prefix": row.prefix, "capabilities": row.capabilities,
            "topicScopes": row.topic_scopes, "createdAt": iso(row.created_at),
            "expiresAt": iso(row.expires_at) if row.expires_at is not None else None,
            "revokedAt": iso(row.revoked_at) if row.revoked_at is not None else None}


# -- WS verbs ---------------------------------------------------------------------------------------

async def _ws_error(conn: Conn, msg: dict[str, Any], code: str, message: str) -> None:
    err: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if msg.get("_reqId") is not None:
        err["id"] = msg["_reqId"]  # like topic_* errors: the request id travels in ``id``
    await conn.send(err)


def _extra(msg: dict[str, Any]) -> dict[str, Any]:
    return {"_reqId": msg["_reqId"]} if msg.get("_reqId") is not None else {}


async def handle_apikey_create(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = conn.presence
    assert p is not None
    label, caps, scopes = msg.get("label"), msg.get("capabilities"), msg.get("topicScopes")
    if (not isinstance(label, str) or not label or not isinstance(caps, list) or not caps
            or any(c not in CAPABILITIES for c in caps)):
        await _ws_error(conn, msg, "invalid_args", "label and at least one capability required")
        return
    if scopes is not None and (not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes)):
        await _ws_error(conn, msg, "invalid_args", "topicScopes must be a list of topic names")
        return
    try:
        expires = _parse_iso_ms(msg["expiresAt"]) if msg.get("expiresAt") is not None else None
    except (ValueError, TypeError):
        await _ws_error(conn, msg, "invalid_args", "expiresAt must be an ISO date")
        return
    row, secret = mint_api_key(b, p.mesh_id, label=label, capabilities=list(dict.fromkeys(caps)),
                               topic_scopes=scopes, expires_at_ms=expires, issued_by_member_id=p.member_id)
    log.info("apikey %s (%s) minted by %s", row.id, row.label, p.display_name)
    await conn.send({"type": "apikey_created", "id": row.id, "secret": secret, "label": row.label,
                     "prefix": row.prefix, "capabilities": row.capabilities, "topicScopes": row.topic_scopes,
                     "createdAt": iso(row.created_at), **_extra(msg)})


async def handle_apikey_list(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = conn.presence
    assert p is not None
    keys = [_key_view(k) for k in b.store.api_keys if k.mesh_id == p.mesh_id]
    await conn.send({"type": "apikey_list_response", "keys": keys, **_extra(msg)})


async def handle_apikey_revoke(b: DevBroker, conn: Conn, msg: dict[str, Any]) -> None:
    p = conn.presence
    assert p is not None
    ref = msg.get("id")
    live = [k for k in b.store.api_keys if k.mesh_id == p.mesh_id and k.revoked_at is None]
    matches = [k for k in live if isinstance(ref, str) and ref and (k.id == ref or k.id.startswith(ref))]
    exact = [k for k in matches if k.id == ref]
    if exact:
        matches = exact
    if not matches:
        await conn.send({"type": "apikey_revoke_response", "status": "not_found", **_extra(msg)})
        return
    if len(matches) > 1:
        await conn.send({"type": "apikey_revoke_response", "status": "not_unique",
                         "matches": [k.id for k in matches], **_extra(msg)})
        return
    matches[0].revoked_at = now_ms()
    b.dirty()
    await conn.send({"type": "apikey_revoke_response", "status": "revoked", "id": matches[0].id, **_extra(msg)})


# -- HTTP -------------------------------------------------------------------------------------------

class _HttpError(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _auth_error(request: web.Request, status: int, code: str, message: str) -> _HttpError:
    body = {"code": code, "message": message, "status": status, "timestamp": iso(now_ms()), "path": request.path}
    return _HttpError(web.json_response(body, status=status))


def _fail(status: int, body: dict[str, Any]) -> _HttpError:
    return _HttpError(web.json_response(body, status=status))


def _authed(request: web.Request, b: DevBroker, cap: str, topic_name: str | None = None) -> ApiKey:
    match = _BEARER.match(request.headers.get("Authorization", ""))
    if match is None:
        raise _auth_error(request, 401, "error.api_key_missing", "Authorization: Bearer cm_... is required")
    key = verify_bearer(b, match.group(1).strip())
    if key is None:
        raise _auth_error(request, 401, "error.api_key_invalid", "API key is unknown, revoked or expired")
    if cap not in key.capabilities and "admin" not in key.capabilities:
        raise _auth_error(request, 403, "error.api_key_missing_capability", f"API key lacks the {cap} capability")
    if topic_name is not None and key.topic_scopes is not None and topic_name not in key.topic_scopes:
        raise _auth_error(request, 403, "error.api_key_topic_out_of_scope", "topic is outside the API key's scope")
    return key


def _topic(b: DevBroker, key: ApiKey, name: str) -> Topic:
    topic = b.store.topic_by_name(key.mesh_id, name)
    if topic is None or topic.archived_at is not None:
        raise _fail(404, {"error": "topic_not_found", "topic": name})
    return topic


async def _json_body(request: web.Request, b: DevBroker, fields: tuple[str, ...]) -> dict[str, str]:
    raw = await request.content.read(b.config.max_message_bytes + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not all(isinstance(data.get(f), str) and data.get(f) for f in fields):
        raise _auth_error(request, 400, "error.invalid_body", f"JSON body with non-empty {', '.join(fields)} required")
    return {f: data[f] for f in fields}


def _guarded(fn: Any) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request, request.app[_BROKER_KEY])
        except _HttpError as exc:
            return exc.response

    return handler


async def list_topics(request: web.Request, b: DevBroker) -> web.Response:
    key = _authed(request, b, "read")
    rows = sorted((t for t in b.store.topics.values() if t.mesh_id == key.mesh_id and t.archived_at is None),
                  key=lambda t: t.name)
    if key.topic_scopes is not None:
        rows = [t for t in rows if t.name in key.topic_scopes]
    return web.json_response({"topics": [{"id": t.id, "name": t.name, "description": t.description,
                                          "visibility": t.visibility, "createdAt": iso(t.created_at), "unread": 0}
                                         for t in rows]})


async def topic_key(request: web.Request, b: DevBroker) -> web.Response:
    name = request.match_info["name"]
    key = _authed(request, b, "read", name)
    if key.issued_by_member_id is None:
        raise _fail(400, {"error": "api_key_has_no_issuer"})
    topic = _topic(b, key, name)
    if not topic.encrypted_key_pubkey:
        raise _fail(409, {"error": "topic_unencrypted", "topic": name,
                          "hint": "legacy v0.2.0 topic — messages are base64 plaintext"})
    sealed = b.store.topic_member_key(topic.id, key.issued_by_member_id)
    if sealed is None:
        raise _fail(404, {"error": "key_not_sealed_for_member", "topic": name,
                          "hint": "join the topic, then ask an existing member to re-seal"})
    return web.json_response({"topic": name, "topicId": topic.id, "encryptedKey": sealed.encrypted_key,
                              "nonce": sealed.nonce, "senderPubkey": topic.encrypted_key_pubkey,
                              "createdAt": iso(sealed.created_at)})


async def pending_seals(request: web.Request, b: DevBroker) -> web.Response:
    name = request.match_info["name"]
    key = _authed(request, b, "read", name)
    topic = _topic(b, key, name)
    if not topic.encrypted_key_pubkey:
        return web.json_response({"pending": [], "senderPubkey": None})
    pending = []
    for tm in b.store.topic_members:
        member = b.store.members.get(tm.member_id)
        if (tm.topic_id != topic.id or member is None or member.revoked_at is not None
                or b.store.topic_member_key(topic.id, member.id) is not None):
            continue
        pending.append({"memberId": member.id, "pubkey": member.peer_pubkey, "displayName": member.display_name})
        if len(pending) >= 50:
            break
    return web.json_response({"topic": name, "topicId": topic.id, "senderPubkey": topic.encrypted_key_pubkey,
                              "pending": pending})


async def seal(request: web.Request, b: DevBroker) -> web.Response:
    name = request.match_info["name"]
    key = _authed(request, b, "send", name)
    body = await _json_body(request, b, ("memberId", "encryptedKey", "nonce"))
    topic = _topic(b, key, name)
    if not topic.encrypted_key_pubkey:
        raise _fail(409, {"error": "topic_unencrypted", "topic": name, "hint": "legacy v0.2.0 topic — no key to seal"})
    member = b.store.members.get(body["memberId"])
    if (member is None or member.mesh_id != key.mesh_id or member.revoked_at is not None
            or b.store.topic_member(topic.id, member.id) is None):
        raise _fail(404, {"error": "recipient_not_in_topic"})
    now = now_ms()
    row = b.store.topic_member_key(topic.id, member.id)
    if row is None:
        b.store.topic_member_keys.append(TopicMemberKey(topic_id=topic.id, member_id=member.id,
                                                        encrypted_key=body["encryptedKey"], nonce=body["nonce"],
                                                        created_at=now))
    else:  # idempotent on (topic, member): a re-submission overwrites
        row.encrypted_key, row.nonce = body["encryptedKey"], body["nonce"]
    b.dirty()
    log.info("topic %s: key sealed for member %s", topic.name, member.display_name)
    return web.json_response({"topic": name, "topicId": topic.id, "memberId": member.id, "sealedAt": iso(now)})


async def claim_key(request: web.Request, b: DevBroker) -> web.Response:
    name = request.match_info["name"]
    key = _authed(request, b, "send", name)
    body = await _json_body(request, b, ("encryptedKeyPubkey", "encryptedKey", "nonce"))
    if key.issued_by_member_id is None:
        raise _fail(400, {"error": "api_key_has_no_issuer"})
    topic = _topic(b, key, name)
    if topic.encrypted_key_pubkey:  # compare-and-set: only a keyless topic can be claimed
        raise _fail(409, {"error": "already_encrypted", "topic": name})
    topic.encrypted_key_pubkey = body["encryptedKeyPubkey"]
    b.store.topic_member_keys = [k for k in b.store.topic_member_keys
                                 if not (k.topic_id == topic.id and k.member_id == key.issued_by_member_id)]
    now = now_ms()
    b.store.topic_member_keys.append(TopicMemberKey(topic_id=topic.id, member_id=key.issued_by_member_id,
                                                    encrypted_key=body["encryptedKey"], nonce=body["nonce"],
                                                    created_at=now))
    b.dirty()
    return web.json_response({"topic": name, "topicId": topic.id, "encryptedKeyPubkey": topic.encrypted_key_pubkey,
                              "claimedAt": iso(now)})


_BROKER_KEY: web.AppKey[Any] = web.AppKey("claudemesh_devbroker_rest")


def install(app: web.Application, b: DevBroker) -> None:
    """Mount ``/api/v1`` on the broker's HTTP app."""
    app[_BROKER_KEY] = b
    app.add_routes([
        web.get("/api/v1/topics", _guarded(list_topics)),
        web.get("/api/v1/topics/{name}/key", _guarded(topic_key)),
        web.get("/api/v1/topics/{name}/pending-seals", _guarded(pending_seals)),
        web.post("/api/v1/topics/{name}/seal", _guarded(seal)),
        web.post("/api/v1/topics/{name}/claim-key", _guarded(claim_key)),
    ])
