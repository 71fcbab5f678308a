"""Push envelopes (spec A.9) and system events (B.44)."""

from __future__ import annotations

import uuid
from typing import Any

from .model import QueueRow
from .presence import Presence
from .util import iso, now_ms


def system_push(mesh_id: str, event: str, event_data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "push", "subtype": "system", "event": event, "eventData": event_data,
        "messageId": str(uuid.uuid4()), "meshId": mesh_id, "senderPubkey": "system", "priority": "low",
        "nonce": "", "ciphertext": "", "createdAt": iso(now_ms()),
    }


def drained_push(row: QueueRow, sender_member_pubkey: str) -> dict[str, Any]:
    """The queue-drained column of A.9."""
    frame: dict[str, Any] = {
        "type": "push", "messageId": row.id, "meshId": row.mesh_id,
        "senderPubkey": row.sender_session_pubkey or sender_member_pubkey,
        "priority": row.priority, "nonce": row.nonce, "ciphertext": row.ciphertext,
        "createdAt": iso(row.created_at),
    }
    if row.client_message_id is not None:
        frame["client_message_id"] = row.client_message_id
    if row.request_fingerprint is not None:
        frame["request_fingerprint"] = row.request_fingerprint
    return frame


def live_push(row: QueueRow, sender: Presence, reply_to_id: Any) -> dict[str, Any]:
    """The live multicast column of A.9 (``*``, ``@all``, ``@group``)."""
    frame: dict[str, Any] = {
        "type": "push", "messageId": row.id, "meshId": row.mesh_id, "senderPubkey": sender.pubkey,
        "senderMemberPubkey": sender.member_pubkey, "senderMemberId": sender.member_id,
        "senderName": sender.display_name, "priority": row.priority, "nonce": row.nonce,
        "ciphertext": row.ciphertext, "createdAt": iso(now_ms()),
    }
    if reply_to_id is not None:
        frame["replyToId"] = reply_to_id
    return frame
