"""Live connections and the presence registry (the broker's in-memory ``connections`` map)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .util import dumps, iso, now_ms

log = logging.getLogger(__name__)

_conn_ids = itertools.count(1)


class Conn:
    """One accepted WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, remote: str | None) -> None:
        self.id = next(_conn_ids)
        self.ws = ws
        self.transport = transport
        self.remote = remote
        self.presence: Presence | None = None
        self.opened_at = now_ms()
        self.closing = False  # a close frame was sent (or the socket was aborted)

    @property
    def open(self) -> bool:
        return not self.ws.closed and self.transport is not None and not self.transport.is_closing()

    async def send(self, frame: dict[str, Any]) -> bool:
        """Send a frame; a frame to a closed socket is dropped (as the broker's ``ws.send`` on a dead socket)."""
        if not self.open:
            return False
        try:
            await self.ws.send_str(dumps(frame))
            return True
        except (ConnectionError, RuntimeError) as exc:
            log.debug("dropped frame to conn %s: %s", self.id, exc)
            return False

    def terminate(self) -> None:
        """Destroy the TCP connection with no close frame (the client sees 1006)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    async def close(self, code: int, reason: str) -> None:
        if self.ws.closed or self.closing:
            return
        self.closing = True
        try:
            await self.ws.close(code=code, message=reason.encode("utf-8"))
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("close of conn %s failed: %s", self.id, exc)
            self.terminate()

    def __repr__(self) -> str:
        return f"Conn#{self.id}"


@dataclass(slots=True, eq=False)
class Presence:
    """A registry entry: online with a socket, or an offline grace lease."""

    presence_id: str
    mesh_id: str
    member_id: str
    member_pubkey: str
    session_pubkey: str | None
    session_id: str
    pid: int
    cwd: str
    display_name: str
    role: str                                   # control-plane | session
    groups: list[dict[str, Any]]
    conn: Conn | None
    connected_at: int = field(default_factory=now_ms)
    lease: str = "online"                       # online | offline
    evict_handle: asyncio.TimerHandle | None = None
    last_pong_at: int = field(default_factory=now_ms)
    last_ping_at: int = field(default_factory=now_ms)
    db_disconnected: bool = False               # presence row marked disconnected (hidden from list_peers)
    manual_status: str | None = None            # "dnd" from set_status sticks
    forced_status: str | None = None            # test knob / POST /hook/set-status
    summary: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    visible: bool = True
    profile: dict[str, Any] = field(default_factory=dict)
    hostname: str | None = None
    peer_type: str | None = None
    channel: str | None = None
    model: str | None = None

    @property
    def pubkey(self) -> str:
        """The routing key: the session pubkey, else the member pubkey."""
        return self.session_pubkey or self.member_pubkey

    @property
    def status(self) -> str:
        """Status at drain time: a set ``dnd`` sticks, otherwise a forced status, otherwise ``idle``."""
        if self.manual_status == "dnd":
            return "dnd"
        return self.forced_status or "idle"

    @property
    def group_names(self) -> list[str]:
        return [g["name"] for g in self.groups if isinstance(g, dict) and isinstance(g.get("name"), str)]

    def cancel_eviction(self) -> None:
        if self.evict_handle is not None:
            self.evict_handle.cancel()
            self.evict_handle = None

    def snapshot(self) -> dict[str, Any]:
        """A read-only view for tests and tools."""
        return {
            "presenceId": self.presence_id, "meshId": self.mesh_id, "memberId": self.member_id,
            "memberPubkey": self.member_pubkey, "sessionPubkey": self.session_pubkey, "pubkey": self.pubkey,
            "sessionId": self.session_id, "displayName": self.display_name, "peerRole": self.role,
            "groups": list(self.groups), "lease": self.lease, "status": self.status,
            "visible": self.visible, "dbDisconnected": self.db_disconnected,
            "connectedAt": iso(self.connected_at), "connId": self.conn.id if self.conn else None,
        }


class Registry:
    """Presence entries by id plus the per-mesh connection count used for capacity."""

    def __init__(self) -> None:
        self.entries: dict[str, Presence] = {}
        self.mesh_count: dict[str, int] = {}

    def in_mesh(self, mesh_id: str) -> list[Presence]:
        return [p for p in self.entries.values() if p.mesh_id == mesh_id]

    def add(self, p: Presence) -> None:
        self.entries[p.presence_id] = p
        self.mesh_count[p.mesh_id] = self.mesh_count.get(p.mesh_id, 0) + 1

    def delete(self, p: Presence, *, decrement: bool) -> None:
        """Remove an entry; only eviction decrements the count (everything else leaks a slot)."""
        p.cancel_eviction()
        if self.entries.pop(p.presence_id, None) is not None and decrement:
            self.mesh_count[p.mesh_id] = max(0, self.mesh_count.get(p.mesh_id, 0) - 1)

    def count(self, mesh_id: str) -> int:
        return self.mesh_count.get(mesh_id, 0)
