"""The roster: ``list_peers``, refreshed periodically and on presence events (A.15).

The broker resolves no names; we do, case-insensitively, preferring ``session`` peers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from ..errors import MeshError
from .aio import TaskOwner, wait_event
from .connection import Connection
from .types import Peer

__all__ = ["AmbiguousPeer", "PeerNotFound", "Roster"]

log = logging.getLogger(__name__)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class PeerNotFound(MeshError, LookupError):
    pass


class AmbiguousPeer(MeshError, LookupError):
    pass


class Roster(TaskOwner):
    def __init__(self, name: str, cfg: Any, conn: Connection, own_keys: frozenset[str]) -> None:
        self.name = name
        self.cfg = cfg
        self.conn = conn
        self.own_keys = own_keys
        self._peers: list[Peer] = []
        self.refreshed_at: float | None = None
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._start_task(self._loop, f"mesh:{self.name}:roster")

    def invalidate(self) -> None:
        """A presence event arrived: refresh soon (events are hints only)."""
        self._dirty.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.conn.wait_connected(None)
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except MeshError as exc:
                if self.conn.terminal_error is not None or self.conn.state == "stopped":
                    return
                log.debug("mesh %s: roster refresh failed: %s", self.name, exc)
            self._dirty.clear()
            await wait_event(self._dirty, self.cfg.roster_refresh)

    # -- data -------------------------------------------------------------------------------------------------------
    async def refresh(self) -> list[Peer]:
        async with self._lock:
            reply = await self.conn.request({"type": "list_peers"})
            raw = reply.get("peers")
            if not isinstance(raw, list):
                raise MeshError(f"mesh {self.name}: list_peers reply has no peers list")
            peers = []
            for item in raw:
                if isinstance(item, dict) and isinstance(item.get("pubkey"), str):
                    peers.append(Peer.from_wire(item, self.own_keys))
            self._peers = peers
            self.refreshed_at = time.time()
            return list(peers)

    async def peers(self, refresh: bool = False) -> list[Peer]:
        if refresh or self.refreshed_at is None:
            return await self.refresh()
        return list(self._peers)

    @property
    def cached(self) -> list[Peer]:
        return list(self._peers)

    def lookup(self, pubkey: str) -> Peer | None:
        for p in self._peers:
            if p.pubkey == pubkey:
                return p
        for p in self._peers:
            if p.member_pubkey == pubkey:
                return p
        return None

    async def resolve(self, who: str) -> Peer:
        """A peer by pubkey (64 hex) or display name (case-insensitive, ``@`` ignored)."""
        who = who.strip()
        if _HEX64.match(who.lower()):
            key = who.lower()
            found = self.lookup(key)
            if found is None:
                await self._refresh_quietly()
                found = self.lookup(key)
            return found or Peer(pubkey=key)
        name = who.lstrip("@").strip().lower()
        if not name:
            raise PeerNotFound("empty peer name")
        matches = self._match(name)
        if not matches:
            await self._refresh_quietly()
            matches = self._match(name)
        if not matches:
            raise PeerNotFound(f"no peer named {who!r} is online on mesh {self.name}")
        sessions = [p for p in matches if p.peer_role == "session"]
        pool = sessions or matches
        if len({p.pubkey for p in pool}) > 1:
            keys = ", ".join(sorted(p.pubkey[:12] + "…" for p in pool))
            raise AmbiguousPeer(f"{len(pool)} peers are named {who!r} on mesh {self.name} ({keys}); "
                                "use the full pubkey")
        return pool[0]

    def _match(self, name: str) -> list[Peer]:
        return [p for p in self._peers if not p.is_self and p.display_name.lower() == name]

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except MeshError as exc:
            log.debug("mesh %s: roster refresh failed: %s", self.name, exc)

    async def with_tag(self, tag: str) -> list[Peer]:
        """Live peers (not us) whose groups / profile tags / roleTag carry ``tag`` (one per pubkey)."""
        if self.refreshed_at is None:
            await self.refresh()
        tag = tag.strip().lstrip("@").lower()
        out: dict[str, Peer] = {}
        for p in self._peers:
            if not p.is_self and p.pubkey not in out and tag in p.tags():
                out[p.pubkey] = p
        return list(out.values())
