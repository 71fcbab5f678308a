"""Pushes: the A.9 decision tree, dedup and ``client_ack`` (A.10).

Pushes are queued by the reader and handled here one at a time, in arrival order, in
their own task (``on_message`` may itself send on the mesh and wait for an ack, which the
reader must stay free to deliver). ``client_ack`` goes out after ``on_message`` returned,
and also for duplicates, echoes and dropped items, which would otherwise return on every
drain.

The queue is bounded (:data:`MAX_QUEUED_PUSHES` pushes, :data:`MAX_QUEUED_PUSH_BYTES` bytes of
frames): a broker that pushes faster than ``on_message`` takes them (a flood, or a slow
downstream) must not grow memory without limit. A push that does not fit is dropped *unacked*
and counted (``dropped["overflow"]``, one WARNING a minute): a queued row (a DM) stays claimed
and returns on the broker's next drain, a live broadcast is lost.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import logging
import re
import time
from typing import Any

from ..errors import MeshError, StoreUnavailable
from . import crypto
from .aio import TaskOwner
from .types import MeshInbound, parse_time_ms

__all__ = ["MAX_ID_CHARS", "MAX_QUEUED_PUSHES", "MAX_QUEUED_PUSH_BYTES", "LRUSet", "PushHandler"]

log = logging.getLogger(__name__)
# A reconnect drain after a long outage can hand us thousands of queued DMs at once; 10,000 pushes
# (the size of the dedup memory) and 64 MiB (a thousand maximal 64 KiB pushes) hold any honest drain
# while the durable hand-off catches up, and bound what a flood can pin.
# Broker message ids are 32 characters and ours are UUIDs; a sender may choose any client_message_id,
# and the dedup memory keeps 10,000 keys, so 60 KiB ids would pin 600 MB. A longer messageId makes
# the push malformed (dropped, and not acked: the ack would carry it back); a longer
# client_message_id is ignored (the push is keyed by its messageId).
MAX_ID_CHARS = 128
MAX_QUEUED_PUSHES = 10_000
MAX_QUEUED_PUSH_BYTES = 64 * 1024 * 1024
_OVERFLOW_LOG_EVERY = 60.0
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
PRESENCE_EVENTS = {"peer_joined", "peer_returned", "peer_left", "peer_visible", "peer_hidden", "profile_updated"}


class LRUSet:
    """A bounded set remembering the most recent ``size`` keys."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def add(self, key: str) -> None:
        self._d[key] = None
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def discard(self, key: str) -> None:
        self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)


class PushHandler(TaskOwner):
    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.queue: asyncio.Queue[tuple[dict[str, Any], int]] = asyncio.Queue()
        self.seen = LRUSet(10_000)
        self.handled = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.queued_bytes = 0  # frames waiting or being handled
        self.max_queued_bytes = 0
        self._overflow_logged: float | None = None

    def start(self) -> None:
        self._start_task(self._loop, f"mesh:{self.peer.name}:pushes")

    def put(self, frame: dict[str, Any], size: int = 0) -> None:
        """Queue a push; ``size`` is its frame's length (bytes or characters) as received."""
        size = max(int(size), 1)
        if self.queue.qsize() >= MAX_QUEUED_PUSHES or self.queued_bytes + size > MAX_QUEUED_PUSH_BYTES:
            self._overflow(frame)
            return
        self.queued_bytes += size
        self.max_queued_bytes = max(self.max_queued_bytes, self.queued_bytes)
        self.queue.put_nowait((frame, size))

    def _overflow(self, frame: dict[str, Any]) -> None:
        self.dropped["overflow"] += 1
        now = time.monotonic()
        mid = frame.get("messageId")
        mid = mid[:40] if isinstance(mid, str) else None
        if self._overflow_logged is None or now - self._overflow_logged >= _OVERFLOW_LOG_EVERY:
            self._overflow_logged = now
            log.warning("mesh %s: push queue full (%d pushes, %d bytes waiting for on_message); push %s dropped "
                        "unacked: a queued DM returns on the broker's next drain, a live broadcast is lost "
                        "(%d dropped so far)", self.peer.name, self.queue.qsize(), self.queued_bytes, mid,
                        self.dropped["overflow"])
        else:
            log.debug("mesh %s: push queue full; push %s dropped unacked", self.peer.name, mid)

    async def _loop(self) -> None:
        while True:
            frame, size = await self.queue.get()
            try:
                await self.handle(frame)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:  # left unacked: it returns; the store logs its outage (rate-limited)
                log.debug("mesh %s: a push was not taken: the store cannot write", self.peer.name)
            except Exception:  # one bad push never stops the others
                log.exception("mesh %s: handling a push failed", self.peer.name)
            finally:
                self.queued_bytes -= size

    # -- the decision tree -----------------------------------------------------------------------------------------------
    async def _ack(self, frame: dict[str, Any]) -> None:
        mid = frame.get("messageId")
        if not isinstance(mid, str) or not mid:
            return
        ack: dict[str, Any] = {"type": "client_ack", "brokerMessageId": mid}
        cmid = frame.get("client_message_id")
        if isinstance(cmid, str) and cmid and len(cmid) <= MAX_ID_CHARS:
            ack["clientMessageId"] = cmid
        conn = self.peer.connection
        if not conn.connected:
            # pushes can precede hello_ack (A.3.4), and nothing may be sent before it
            with contextlib.suppress(MeshError):
                await conn.wait_connected(self.peer.cfg.hello_timeout)
        if not await conn.send_nowait(ack):
            log.debug("mesh %s: client_ack for %s not sent (disconnected); the push will return", self.peer.name, mid)

    def _drop(self, reason: str, frame: dict[str, Any]) -> None:
        self.dropped[reason] += 1
        mid = frame.get("messageId")
        log.debug("mesh %s: push %s dropped: %s", self.peer.name, mid[:40] if isinstance(mid, str) else mid, reason)

    async def handle(self, frame: dict[str, Any]) -> None:
        peer = self.peer
        sender = frame.get("senderPubkey")
        # 1. system events: hints for the roster
        if frame.get("subtype") == "system" or sender == "system":
            event = frame.get("event")
            if event in PRESENCE_EVENTS:
                peer.roster.invalidate()
            log.debug("mesh %s: system event %s", peer.name, event)
            return
        mid = frame.get("messageId")
        if not isinstance(mid, str) or not mid or len(mid) > MAX_ID_CHARS or not isinstance(sender, str):
            self._drop("malformed", frame)
            return
        cmid = frame.get("client_message_id")
        cmid = cmid if isinstance(cmid, str) and cmid and len(cmid) <= MAX_ID_CHARS else None
        # 2. echoes (ours, or carrying a client_message_id we sent)
        if (sender.lower() in peer.own_keys or frame.get("senderMemberId") == peer.cfg.member_id
                or (cmid is not None and cmid in peer.sent_ids)):
            self._drop("echo", frame)
            await self._ack(frame)
            return
        key = cmid or mid
        if key in self.seen or mid in self.seen:
            self._drop("duplicate", frame)
            await self._ack(frame)
            return
        nonce = frame.get("nonce") if isinstance(frame.get("nonce"), str) else ""
        ciphertext = frame.get("ciphertext") if isinstance(frame.get("ciphertext"), str) else ""
        kind = "broadcast"
        text: str | None = None
        # 3. a DM: crypto_box with our session key, then our member key
        if nonce and _HEX64.match(sender):
            for pair in (peer.session_keypair, peer.cfg.member_keypair()):
                text = crypto.box_open(nonce, ciphertext, sender.lower(), pair)
                if text is not None:
                    kind = "dm"
                    break
        # 4. a drained topic row (encrypted): topics come from history; ack and drop
        if text is None and _nonce_ok(nonce):
            hit = peer.keyring.try_all_topic_keys(peer.name, nonce, ciphertext, await peer.topic_candidates())
            if hit is not None:
                self._drop("topic_row", frame)
                self.seen.add(key)
                await self._ack(frame)
                peer.wake_topic(hit[0])  # the row is news: read that topic's history now
                return
        # 5. base64 UTF-8 (broadcast, group, v1 topic row, scheduled)
        if text is None:
            text = crypto.v1_decode(ciphertext)
            if text is None and not isinstance(frame.get("senderName"), str) and _nonce_ok(nonce):
                # a drained topic row whose key we do not hold (yet): topics come from history (A.12)
                target = await self._target_of(mid)
                if target is not None and target.startswith("#"):
                    self._drop("topic_row", frame)
                    self.seen.add(key)
                    await self._ack(frame)
                    peer.wake_topic(target[1:])
                    return
            if text is None:
                log.warning("mesh %s: push %s from %s… is undecryptable; dropped", peer.name, mid, sender[:12])
                self._drop("undecryptable", frame)
                await self._ack(frame)
                return
            # 6. no senderName: a drained row; ask the broker what it was addressed to
            if not isinstance(frame.get("senderName"), str):
                target = await self._target_of(mid)
                if target is None:
                    log.warning("mesh %s: cannot classify push %s; leaving it unacked (it returns on the next "
                                "drain)", peer.name, mid)
                    return
                if target.startswith("#"):
                    self._drop("topic_row", frame)
                    self.seen.add(key)
                    await self._ack(frame)
                    peer.wake_topic(target[1:])
                    return
                kind = "broadcast" if target.startswith(("*", "@")) else "dm"
        name = frame.get("senderName") if isinstance(frame.get("senderName"), str) else None
        if name is None:
            known = peer.roster.lookup(sender.lower())
            name = known.display_name if known is not None else None
        reply_to = frame.get("replyToId")
        item = MeshInbound(
            kind=kind, mesh=peer.name, mesh_id=peer.cfg.mesh_id, id=key, text=text, sender_pubkey=sender.lower(),
            sender_member_id=frame.get("senderMemberId") if isinstance(frame.get("senderMemberId"), str) else None,
            sender_name=name, reply_to_id=reply_to if isinstance(reply_to, str) and reply_to else None,
            created_at=parse_time_ms(frame.get("createdAt")), client_message_id=cmid, message_id=mid,
            priority=frame.get("priority") if isinstance(frame.get("priority"), str) else None,
        )
        self.seen.add(key)
        self.seen.add(mid)
        try:
            await peer.deliver(item)
        except Exception:
            self.seen.discard(key)
            self.seen.discard(mid)
            raise  # not acked: the broker hands it out again on the next drain
        self.handled += 1
        await self._ack(frame)

    async def _target_of(self, mid: str) -> str | None:
        try:
            reply = await self.peer.connection.request({"type": "message_status", "messageId": mid})
        except MeshError as exc:
            log.debug("mesh %s: message_status %s failed: %s", self.peer.name, mid, exc)
            return None
        target = reply.get("targetSpec")
        return target if isinstance(target, str) else None


def _nonce_ok(nonce: str) -> bool:
    if not nonce:
        return False
    try:
        return len(crypto.unb64(nonce)) == crypto.NONCE_BYTES
    except (ValueError, binascii.Error):
        return False
