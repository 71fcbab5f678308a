"""In-memory tables of the dev broker, persisted as one JSON file in the state directory.

Writes are atomic (temporary file + ``os.replace``). Invites minted offline by the
``mint-invite`` helper while a broker runs are merged back in on every save and on an
invite lookup miss, so the two never clobber each other.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..files import make_private_dir
from .model import (
    ApiKey,
    Invite,
    Member,
    Mesh,
    Notification,
    PeerState,
    QueueRow,
    Topic,
    TopicMember,
    TopicMemberKey,
    TopicMessage,
    row_from_dict,
    row_to_dict,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_VERSION = 1

_TABLES: dict[str, type] = {
    "meshes": Mesh,
    "members": Member,
    "topics": Topic,
    "topic_members": TopicMember,
    "topic_member_keys": TopicMemberKey,
    "topic_messages": TopicMessage,
    "queue": QueueRow,
    "invites": Invite,
    "peer_states": PeerState,
    "notifications": Notification,
    "api_keys": ApiKey,
}


class Store:
    """Tables as plain lists/dicts; the broker runs on one event loop, so no locking is needed."""

    def __init__(self, state_dir: Path | None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.meshes: dict[str, Mesh] = {}
        self.members: dict[str, Member] = {}
        self.topics: dict[str, Topic] = {}
        self.topic_members: list[TopicMember] = []
        self.topic_member_keys: list[TopicMemberKey] = []
        self.topic_messages: list[TopicMessage] = []
        self.queue: list[QueueRow] = []
        self.invites: dict[str, Invite] = {}          # by token
        self.peer_states: dict[tuple[str, str], PeerState] = {}
        self.notifications: list[Notification] = []
        self.api_keys: list[ApiKey] = []
        self.session_owner: dict[str, str] = {}        # every session pubkey seen -> member id
        self.seed: dict[str, Any] | None = None        # credentials of the seeded dev mesh

    # -- persistence -------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir is not None else None

    def load(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        data = self._read(path)
        if data is None:
            raise RuntimeError(f"dev broker state file {path} is not valid JSON; move it away to start fresh")
        self.meshes = {r["id"]: row_from_dict(Mesh, r) for r in data.get("meshes", [])}
        self.members = {r["id"]: row_from_dict(Member, r) for r in data.get("members", [])}
        self.topics = {r["id"]: row_from_dict(Topic, r) for r in data.get("topics", [])}
        self.topic_members = [row_from_dict(TopicMember, r) for r in data.get("topic_members", [])]
        self.topic_member_keys = [row_from_dict(TopicMemberKey, r) for r in data.get("topic_member_keys", [])]
        self.topic_messages = [row_from_dict(TopicMessage, r) for r in data.get("topic_messages", [])]
        self.queue = [row_from_dict(QueueRow, r) for r in data.get("queue", [])]
        self.invites = {r["token"]: row_from_dict(Invite, r) for r in data.get("invites", [])}
        self.peer_states = {
            (r["mesh_id"], r["member_id"]): row_from_dict(PeerState, r) for r in data.get("peer_states", [])
        }
        self.notifications = [row_from_dict(Notification, r) for r in data.get("notifications", [])]
        self.api_keys = [row_from_dict(ApiKey, r) for r in data.get("api_keys", [])]
        self.session_owner = dict(data.get("session_owner", {}))
        self.seed = data.get("seed")
        log.info("dev broker state loaded from %s (%d meshes, %d members)", path, len(self.meshes),
                 len(self.members))

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def merge_disk_invites(self) -> int:
        """Adopt invites written to the state file by another process (``mint-invite``)."""
        path = self.path
        if path is None or not path.exists():
            return 0
        data = self._read(path) or {}
        added = 0
        for raw in data.get("invites", []):
            if raw.get("token") not in self.invites:
                self.invites[raw["token"]] = row_from_dict(Invite, raw)
                added += 1
        return added

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "meshes": [row_to_dict(r) for r in self.meshes.values()],
            "members": [row_to_dict(r) for r in self.members.values()],
            "topics": [row_to_dict(r) for r in self.topics.values()],
            "topic_members": [row_to_dict(r) for r in self.topic_members],
            "topic_member_keys": [row_to_dict(r) for r in self.topic_member_keys],
            "topic_messages": [row_to_dict(r) for r in self.topic_messages],
            "queue": [row_to_dict(r) for r in self.queue],
            "invites": [row_to_dict(r) for r in self.invites.values()],
            "peer_states": [row_to_dict(r) for r in self.peer_states.values()],
            "notifications": [row_to_dict(r) for r in self.notifications],
            "api_keys": [row_to_dict(r) for r in self.api_keys],
            "session_owner": self.session_owner,
            "seed": self.seed,
        }

    def save(self) -> None:
        path = self.path
        if path is None:
            return
        self.merge_disk_invites()
        make_private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.snapshot(), fh, ensure_ascii=False, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- queries -----------------------------------------------------------------------------

    def mesh_by_slug(self, slug: str) -> Mesh | None:
        return next((m for m in self.meshes.values() if m.slug == slug), None)

    def member_by_pubkey(self, mesh_id: str, pubkey: str, *, revoked: bool | None = False) -> Member | None:
        """Exact pubkey match; ``revoked`` False = live members, True = revoked only, None = any."""
        for m in self.members.values():
            if m.mesh_id != mesh_id or m.peer_pubkey != pubkey:
                continue
            if revoked is None or (m.revoked_at is not None) == revoked:
                return m
        return None

    def topic_by_name(self, mesh_id: str, name: str) -> Topic | None:
        return next((t for t in self.topics.values() if t.mesh_id == mesh_id and t.name == name), None)

    def topic_member_key(self, topic_id: str, member_id: str) -> TopicMemberKey | None:
        return next((k for k in self.topic_member_keys if k.topic_id == topic_id and k.member_id == member_id),
                    None)

    def topic_member(self, topic_id: str, member_id: str) -> TopicMember | None:
        return next((tm for tm in self.topic_members if tm.topic_id == topic_id and tm.member_id == member_id),
                    None)

    def member_topic_ids(self, member_id: str) -> set[str]:
        return {tm.topic_id for tm in self.topic_members if tm.member_id == member_id}

    def topic_message(self, message_id: str) -> TopicMessage | None:
        return next((m for m in self.topic_messages if m.id == message_id), None)
