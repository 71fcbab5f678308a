"""``MeshPeer``: the gateway as a ``connector`` peer of one claudemesh mesh (mesh-protocol.md part A).

It composes the connection (hello, keepalive, reconnect), the sender (ack handling and the
local rate limit), the push handler (A.9 decision tree, ``client_ack``), the roster and one
topic poller per watched topic. All keys stay inside: callers pass and receive plaintext.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from ..errors import DeliveryError, MeshError
from . import crypto
from .connection import Connection, MeshRequestError
from .inbound import LRUSet, PushHandler
from .keys import KeyRing, KeyRingError
from .poller import TopicPoller
from .ratelimit import TokenBucket
from .roster import Roster
from .sealed import SealedTopicKeys
from .sender import Sender
from .state import KV, KV_NAMESPACE, load_session_identity
from .types import MeshInbound, Peer, Topic

__all__ = ["MeshPeer"]

log = logging.getLogger(__name__)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_MENTIONS = 16
RATE_SAFETY = 0.9
READBACK_MAX_ROWS = 1000  # how far back a post of ours is looked for in topic_history (see _find_posted)
WATCH_CONCURRENCY = 16  # topics joined (and their sealed keys fetched) at the same time


class MeshPeer:
    """One mesh connection. See docs/contracts.md "Mesh peer" for the contract."""

    def __init__(
        self, name: str, cfg: Any, *, kv: KV, keyring: KeyRing | None = None,
        on_message: Callable[[MeshInbound], Awaitable[Any] | Any] | None = None,
        on_messages: Callable[[list[MeshInbound]], Awaitable[Any]] | None = None,
        on_state: Callable[[str, str], None] | None = None,
        identity: str = "service", clock: Callable[[], float] = time.time,
    ) -> None:
        if identity not in ("service", "cli"):
            raise ValueError("identity must be 'service' or 'cli'")
        self.name = name
        self.cfg = cfg
        self.kv = kv
        if keyring is None:
            keyring = KeyRing.from_configs({name: cfg})
        elif name not in keyring.meshes():
            keyring.add_mesh(name, cfg)
        self.keyring = keyring
        self.on_message = on_message
        self.on_messages = on_messages  # several topic rows of one poll at once (else on_message each)
        self.on_state = on_state
        self.identity = identity
        self._clock = clock
        self.connection: Connection = None  # type: ignore[assignment]  # set by start()
        self.roster: Roster = None  # type: ignore[assignment]
        self.sender: Sender = None  # type: ignore[assignment]
        self.sealed: SealedTopicKeys | None = None  # bodyVersion 2 keys, when REST is configured (A.13)
        self.v2_topics: set[str] = set()  # topic ids whose history carries bodyVersion 2 rows
        self.pushes = PushHandler(self)
        # refill 10% slower than the broker's bucket: our token is taken at send time, the
        # broker's at receive time, and jitter in between must never cost a rate_limit ack
        self.bucket = TokenBucket(cfg.rate_burst, cfg.rate_per_minute * RATE_SAFETY)
        self.sent_ids = LRUSet(10_000)
        # every topic_history request of the pollers takes a token: a fixed request rate per mesh
        self.poll_bucket = TokenBucket(max(1, int(cfg.topic_poll_budget)), cfg.topic_poll_budget * 60)
        self.pollers: dict[str, TopicPoller] = {}
        self.topic_gate: Callable[[TopicPoller], Awaitable[bool]] | None = None  # replicas: a topic lease
        self._topics: dict[str, Topic] = {}  # name -> Topic
        self._topics_by_id: dict[str, Topic] = {}
        self._topics_fetched = False
        self.session_keypair: crypto.KeyPair | None = None
        self.own_keys: frozenset[str] = frozenset({cfg.member_pubkey})
        self._started = False
        # one lock per topic name: watching many topics joins them (and fetches their sealed keys)
        # concurrently; the same name twice waits for the first
        self._watch_locks: dict[str, asyncio.Lock] = {}
        self._watch_slots = asyncio.Semaphore(WATCH_CONCURRENCY)  # joins + sealed-key fetches at once
        self._topic_list: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<MeshPeer {self.name} mesh={self.cfg.mesh_id} state={self.state}>"

    # -- lifecycle --------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load (or mint) the session identity and start connecting in the background. Returns at once."""
        if self._started:
            return
        ident = await load_session_identity(self.kv, self.name, self.cfg.member_pubkey,
                                            ephemeral=self.identity == "cli")
        self.session_keypair = ident.keypair
        self.own_keys = frozenset({self.cfg.member_pubkey, ident.pubkey})
        last_presence = None
        if ident.persisted:
            saved = await self.kv.kv_get(KV_NAMESPACE, self._presence_key)
            last_presence = saved if isinstance(saved, str) else None
        self.connection = Connection(self.name, self.cfg, ident, on_push=self.pushes.put,
                                     on_connected=self._connected, on_state=self._state_changed, clock=self._clock,
                                     presence_id=last_presence)
        self.roster = Roster(self.name, self.cfg, self.connection, self.own_keys)
        self.sender = Sender(self.name, self.cfg, self.connection, self.bucket)
        if self.cfg.rest_url is not None:
            self.sealed = SealedTopicKeys(self.name, self.cfg, self.connection.request)
            self.keyring.set_sealed_key_provider(self.sealed, mesh=self.name)
            await self.sealed.start()
        self._started = True
        self.pushes.start()
        self.roster.start()
        await self.connection.start()
        log.info("mesh %s: starting (%s handshake, session %s)", self.name, self.cfg.handshake, ident.session_id)

    async def stop(self) -> None:
        if not self._started:
            return
        for poller in list(self.pollers.values()):
            await poller.stop()
        await self.roster.stop()
        await self.pushes.stop()
        if self.sealed is not None:
            await self.sealed.stop()  # revokes its API keys while the socket is still up
            self.keyring.set_sealed_key_provider(None, mesh=self.name)
            self.sealed = None
        await self.connection.stop()
        self.pollers.clear()
        self._started = False  # start() may be called again (same identity, fresh connection)
        log.info("mesh %s: stopped", self.name)

    async def wait_connected(self, timeout: float | None = None) -> None:
        self._require_started()
        await self.connection.wait_connected(timeout)

    def _require_started(self) -> None:
        if not self._started:
            raise MeshError(f"mesh {self.name}: peer not started")

    # -- state & metrics ---------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.connection is None:
            return "stopped"
        return self.connection.state

    @property
    def last_error(self) -> str | None:
        return self.connection.last_error if self.connection is not None else None

    @property
    def reconnects(self) -> int:
        return self.connection.reconnects if self.connection is not None else 0

    @property
    def bad_frames(self) -> dict[str, int]:
        """Frames from the broker dropped as bad, by reason (``not_json``, ``too_deep``, ``oversized``, ...)."""
        return dict(self.connection.bad_frames) if self.connection is not None else {}

    @property
    def presence_id(self) -> str | None:
        return self.connection.presence_id if self.connection is not None else None

    @property
    def session_id(self) -> str | None:
        return self.connection.ident.session_id if self.connection is not None else None

    @property
    def session_pubkey(self) -> str | None:
        return self.session_keypair.public_hex if self.session_keypair else None

    def poll_stats(self) -> dict[str, dict[str, Any]]:
        """Per watched topic: last poll completion (epoch s), latency (s), counters. ``skipped``: unseen
        rows not delivered, by reason (``beyond_window``, ``backfill_cap``); ``bad_timestamps``: rows
        delivered with the receipt time because their ``createdAt`` did not convert."""
        return {
            name: {"last_poll_at": p.last_poll_at, "poll_latency": p.poll_latency, "polls": p.polls,
                   "delivered": p.delivered, "undecryptable": p.undecryptable, "skipped": dict(p.skipped),
                   "bad_timestamps": p.bad_timestamps, "last_error": p.last_error, "standby": p.standby}
            for name, p in self.pollers.items()
        }

    def sealed_key_report(self) -> dict[str, dict[str, Any]]:
        """Per bound topic: the sealed key's ``state`` (sealed, unencrypted, pending, error) and ``detail``;
        empty when REST is not configured."""
        return self.sealed.report() if self.sealed is not None else {}

    async def effective_encryption(self, name_or_id: str) -> tuple[str, int | None, str]:
        """``(mode, body_version, detail)`` a post to this topic gets now: the configured mode, the
        bodyVersion (None when ``auto`` cannot send yet) and why (the key state, or the error)."""
        topic = await self.resolve_topic(name_or_id)
        mode = self.keyring.mode(self.name, topic.id, topic.name)
        if self.sealed is not None and mode == "auto":
            await self.sealed.ensure(topic)
        refusal = self._no_rest_refusal(topic, mode)
        if refusal is not None:
            return mode, None, refusal
        try:  # a trial seal: also catches an hkdf topic without root_key/key_secret
            _nonce, _ct, bv = self.keyring.seal(self.name, topic.id, topic.name, "")
        except KeyRingError as exc:
            return mode, None, str(exc)
        if mode != "auto":
            detail = f"encryption = {mode!r}"
        elif self.sealed is None:
            detail = "REST is not configured (rest.url): sealed topic keys cannot be fetched, so auto posts bodyVersion 1"
        else:
            detail = self.sealed.topic_status(self.name, topic.id).detail
        return mode, bv, detail

    def _no_rest_refusal(self, topic: Topic, mode: str) -> str | None:
        """Without REST, ``auto`` cannot see sealed keys and posts v1; but never into a topic whose
        history shows bodyVersion 2 rows: that topic is encrypted, and v1 would be in the clear."""
        if mode != "auto" or self.sealed is not None or topic.id not in self.v2_topics:
            return None
        return (f"mesh {self.name}: topic {topic.name!r} carries bodyVersion 2 (sealed-key) posts but REST is not "
                f"configured ([mesh.{self.name}.rest] url), so its key cannot be fetched; not posting in the clear. "
                "Set rest.url, or choose encryption = \"plaintext\" or \"hkdf\" for this topic")

    @property
    def last_poll_at(self) -> dict[str, float | None]:
        return {name: p.last_poll_at for name, p in self.pollers.items()}

    @property
    def poll_latency(self) -> dict[str, float | None]:
        return {name: p.poll_latency for name, p in self.pollers.items()}

    def _state_changed(self, state: str, detail: str) -> None:
        if self.on_state is not None:
            try:
                self.on_state(state, detail)
            except Exception:
                log.exception("mesh %s: on_state callback failed", self.name)

    @property
    def _presence_key(self) -> str:
        return f"{self.name}:presence"

    async def _connected(self, ack: dict[str, Any], reattached: bool) -> None:
        if self.connection.ident.persisted and not reattached and self.connection.presence_id:
            try:  # remembered so a restart within the lease's grace detects the reattach (redrain)
                await self.kv.kv_set(KV_NAMESPACE, self._presence_key, self.connection.presence_id)
            except Exception:
                log.warning("mesh %s: could not persist the presence id", self.name, exc_info=True)
        for poller in self.pollers.values():
            poller.wake()
        self.roster.invalidate()

    # -- inbound -------------------------------------------------------------------------------------------------------
    async def deliver(self, item: MeshInbound) -> None:
        """Hand ``item`` to ``on_message`` (awaited). Without a callback, items are logged and dropped."""
        if self.on_message is None:
            log.debug("mesh %s: no on_message callback; %s %s dropped", self.name, item.kind, item.id)
            return
        result = self.on_message(item)
        if inspect.isawaitable(result):
            await result

    async def deliver_many(self, items: list[MeshInbound]) -> None:
        """Hand several topic rows (oldest first) to ``on_messages`` in one call (awaited)."""
        if self.on_messages is None:
            for item in items:
                await self.deliver(item)
            return
        await self.on_messages(items)

    async def topic_candidates(self) -> list[tuple[str, str | None]]:
        """Topics whose keys may open a drained push; the topic list is fetched once if none is known."""
        if not self._topics_by_id and not self._topics_fetched:
            self._topics_fetched = True
            try:
                await self.topics()
            except MeshError as exc:
                log.debug("mesh %s: topic_list for push classification failed: %s", self.name, exc)
        return self.known_topics()

    def known_topics(self) -> list[tuple[str, str | None]]:
        """(topic id, name) of every topic we know, watched ones first (A.9 step 4)."""
        out = [(p.topic.id, p.topic.name) for p in self.pollers.values()]
        seen = {t for t, _ in out}
        out += [(t.id, t.name) for t in self._topics_by_id.values() if t.id not in seen]
        return out

    # -- topics ----------------------------------------------------------------------------------------------------------
    async def topics(self, refresh: bool = True) -> list[Topic]:
        """``topic_list``: every non-archived topic of the mesh."""
        self._require_started()
        if refresh or not self._topics:
            # one topic_list in flight at a time: the refreshes asked for meanwhile share its answer
            # (watching 1,000 topics at startup would otherwise send 1,000 lists of 1,000 topics)
            if self._topic_list is None or self._topic_list.done():
                self._topic_list = asyncio.ensure_future(self._list_topics())
            await asyncio.shield(self._topic_list)
        return list(self._topics.values())

    async def _list_topics(self) -> None:
        reply = await self.connection.request({"type": "topic_list"})
        raw = reply.get("topics")
        if not isinstance(raw, list):
            raise MeshError(f"mesh {self.name}: topic_list reply has no topics list")
        topics = [Topic.from_wire(t) for t in raw if isinstance(t, dict) and "id" in t and "name" in t]
        self._topics = {t.name: t for t in topics}
        self._topics_by_id.update({t.id: t for t in topics})

    async def resolve_topic(self, name_or_id: str) -> Topic:
        """A topic by name (or id), from the cache, refreshed on a miss. MeshError if it does not exist."""
        key = name_or_id.lstrip("#")
        for attempt in range(2):
            if attempt or not self._topics:
                await self.topics(refresh=True)
            if key in self._topics:
                return self._topics[key]
            if key in self._topics_by_id:
                return self._topics_by_id[key]
        raise MeshError(f"mesh {self.name}: topic {key!r} does not exist (create it, or fix the route)")

    async def create_topic(self, name: str, *, description: str = "", visibility: str = "public") -> Topic:
        """``topic_create`` (idempotent; joins us as lead)."""
        frame = {"type": "topic_create", "name": name, "visibility": visibility}
        if description:
            frame["description"] = description
        reply = await self.connection.request(frame)
        raw = reply.get("topic")
        if not isinstance(raw, dict) or "id" not in raw:
            raise MeshError(f"mesh {self.name}: topic_create reply has no topic")
        topic = Topic.from_wire({"name": name, **raw})
        self._topics[topic.name] = topic
        self._topics_by_id[topic.id] = topic
        return topic

    async def join_topic(self, name_or_id: str) -> Topic:
        """``topic_join`` (no reply on success, so none is awaited)."""
        topic = await self.resolve_topic(name_or_id)
        await self.connection.send_frame({"type": "topic_join", "topic": topic.id})
        return topic

    async def leave_topic(self, name_or_id: str) -> None:
        topic = await self.resolve_topic(name_or_id)
        await self.connection.send_frame({"type": "topic_leave", "topic": topic.id})

    async def topic_members(self, name_or_id: str) -> list[dict[str, Any]]:
        topic = await self.resolve_topic(name_or_id)
        reply = await self.connection.request({"type": "topic_members", "topic": topic.id})
        members = reply.get("members")
        return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []

    async def topic_history(self, name_or_id: str, *, limit: int = 50, before_id: str | None = None
                            ) -> list[dict[str, Any]]:
        """Raw ``topic_history`` rows, newest first."""
        topic = await self.resolve_topic(name_or_id)
        frame: dict[str, Any] = {"type": "topic_history", "topic": topic.id, "limit": limit}
        if before_id:
            frame["beforeId"] = before_id
        reply = await self.connection.request(frame)
        rows = reply.get("messages")
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    async def watch_topic(self, name: str, *, timeout: float | None = None, since_ms: int | None = None
                          ) -> TopicPoller:
        """Resolve ``name``, ``topic_join`` it and poll its history (cursor persisted in the kv).

        ``since_ms`` (default: now) is when the watch began: a topic's very first poll delivers
        every row posted from then on (plus ``topic_backfill`` older ones), however long the
        connection, the join and the key took. It is kept in the kv until that first poll is
        saved, so a process killed before it does not move the start forward and lose the rows
        posted in between."""
        self._require_started()
        since = int(time.time() * 1000) if since_ms is None else int(since_ms)
        async with self._watch_locks.setdefault(name, asyncio.Lock()):
            if name in self.pollers:
                return self.pollers[name]
            since = await self._watch_since(name, since)
            await self.connection.wait_connected(timeout)
            async with self._watch_slots:
                topic = await self.join_topic(name)
                if self.sealed is not None:  # its v2 rows open, and new members get a sealed copy from us
                    await self.sealed.ensure(topic)
            poller = TopicPoller(self, topic, self.deliver, watch_started_ms=since,
                                 on_rows=self.deliver_many if self.on_messages is not None else None)
            self.pollers[name] = poller
            poller.start()
            log.info("mesh %s: polling #%s (%s)", self.name, topic.name, topic.id)
            return poller

    async def _watch_since(self, name: str, since: int) -> int:
        """The earliest start of a watch of ``name`` whose first poll has not been saved yet."""
        key = f"{self.name}:topic-since:{name}"
        saved = await self.kv.kv_get(KV_NAMESPACE, key)
        if isinstance(saved, int) and not isinstance(saved, bool) and 0 < saved < since:
            return saved
        await self.kv.kv_set(KV_NAMESPACE, key, since)
        return since

    def wake_topic(self, topic_id: str) -> None:
        """Poll the topic with this id now (a drained row of it arrived: it has news)."""
        for poller in self.pollers.values():
            if poller.topic.id == topic_id:
                poller.wake()

    async def unwatch_topic(self, name: str) -> None:
        poller = self.pollers.pop(name, None)
        if poller is not None:
            await poller.stop()

    # -- sending -----------------------------------------------------------------------------------------------------------
    def _check_text(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self.cfg.max_plaintext_bytes:
            raise DeliveryError(f"text is {size} bytes, over mesh.max_plaintext_bytes={self.cfg.max_plaintext_bytes}"
                                " (the core splits longer texts before they reach the mesh)", permanent=True)

    def _frame(self, target: str, nonce: str, ciphertext: str, cmid: str, priority: str) -> dict[str, Any]:
        self.sent_ids.add(cmid)
        return {"type": "send", "id": cmid, "client_message_id": cmid, "targetSpec": target, "priority": priority,
                "nonce": nonce, "ciphertext": ciphertext}

    async def send_dm(self, pubkey: str, text: str, *, client_message_id: str | None = None,
                      priority: str | None = None, retry_window: float | None = None) -> str:
        """crypto_box ``text`` to ``pubkey`` (64 hex, session or member key) and send it. Returns the queue id."""
        self._require_started()
        pubkey = pubkey.strip().lower()
        if not _HEX64.match(pubkey):
            raise DeliveryError(f"DM target must be a 64-hex pubkey (got {pubkey[:16]!r}); resolve names first",
                                permanent=True)
        self._check_text(text)
        assert self.session_keypair is not None
        try:
            nonce, ct = crypto.box_seal(text, pubkey, self.session_keypair)
        except (ValueError, TypeError) as exc:
            raise DeliveryError(f"DM target {pubkey[:16]}… is not a valid ed25519 key", permanent=True) from exc
        cmid = client_message_id or str(uuid.uuid4())
        frame = self._frame(pubkey, nonce, ct, cmid, priority or self.cfg.default_priority)
        return await self.sender.send(frame, retry_window=retry_window)

    async def broadcast(self, text: str, *, group: str | None = None, client_message_id: str | None = None,
                        priority: str | None = None) -> str:
        """Live multicast to ``*`` or ``@<group>`` (base64 plaintext, as upstream; A.8)."""
        self._require_started()
        self._check_text(text)
        target = "*" if not group else "@" + group.lstrip("@")
        cmid = client_message_id or str(uuid.uuid4())
        frame = self._frame(target, crypto.b64(crypto.random_nonce()), crypto.v1_encode(text), cmid,
                            priority or self.cfg.default_priority)
        return await self.sender.send(frame, retry_window=0)

    async def post_topic(self, topic_name: str, text: str, *, reply_to_id: str | None = None,
                         mentions: Sequence[str] | Iterable[str] = (), client_message_id: str | None = None,
                         priority: str | None = None, find_id: bool = True) -> str | None:
        """Post to ``#<topicId>`` (never ``#name``), sealed per the key ring (v2 / v3 / v1). Returns the
        topic_message id (found in ``topic_history`` by our nonce), or None if it could not be found.
        ``find_id=False`` skips that read-back (and returns None) once the broker acknowledged."""
        self._require_started()
        self._check_text(text)
        try:
            topic = await self.resolve_topic(topic_name)
        except MeshRequestError as exc:
            raise DeliveryError(f"mesh {self.name}: {exc}") from exc
        mode = self.keyring.mode(self.name, topic.id, topic.name)
        if self.sealed is not None and mode == "auto":
            await self.sealed.ensure(topic)  # fetch the sealed key once (or learn the topic is v1)
        refusal = self._no_rest_refusal(topic, mode)
        if refusal is not None:
            raise DeliveryError(refusal, permanent=True)
        try:
            nonce, ct, bv = self.keyring.seal(self.name, topic.id, topic.name, text)
        except KeyRingError as exc:
            raise DeliveryError(str(exc), permanent=not exc.transient) from exc
        cmid = client_message_id or str(uuid.uuid4())
        frame = self._frame("#" + topic.id, nonce, ct, cmid, priority or self.cfg.default_priority)
        frame["bodyVersion"] = bv
        frame["mentions"] = _mentions(mentions)
        if reply_to_id:
            frame["replyToId"] = reply_to_id
        await self.sender.send(frame, retry_window=0)
        return await self._find_posted(topic, nonce) if find_id else None

    async def _find_posted(self, topic: Topic, nonce: str) -> str | None:
        """Our row's topic_message id, found by its nonce. ``topic_history`` is newest first by the
        broker's clock, so after that clock stepped back our row sorts under every row written
        while it ran fast: past the newest page, it is looked for further back (by ``beforeId``)
        within :data:`READBACK_MAX_ROWS`."""
        for attempt in range(3):
            before: str | None = None
            seen = 0
            while seen < READBACK_MAX_ROWS:
                limit = 50 if before is None else 200
                try:
                    rows = await self.topic_history(topic.id, limit=limit, before_id=before)
                except MeshError as exc:
                    log.debug("mesh %s: could not read back #%s: %s", self.name, topic.name, exc)
                    break
                for row in rows:
                    if row.get("nonce") == nonce and row.get("senderMemberId") in (self.cfg.member_id, None):
                        return str(row["id"])
                seen += len(rows)
                last = rows[-1].get("id") if rows else None
                if len(rows) < limit or not isinstance(last, str) or last == before:
                    break
                before = last
            await asyncio.sleep(0.2 * (attempt + 1))
        log.warning("mesh %s: posted to #%s but could not find the topic message id", self.name, topic.name)
        return None

    # -- roster --------------------------------------------------------------------------------------------------------
    async def peers(self, refresh: bool = False) -> list[Peer]:
        self._require_started()
        return await self.roster.peers(refresh=refresh)

    async def resolve_peer(self, name_or_pubkey: str) -> Peer:
        """A peer by pubkey or display name; MeshError (LookupError) when unknown or ambiguous."""
        self._require_started()
        return await self.roster.resolve(name_or_pubkey)

    async def peers_with_tag(self, tag: str) -> list[Peer]:
        self._require_started()
        return await self.roster.with_tag(tag)


def _mentions(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        name = str(v).strip().lstrip("@").lower()
        if name and name not in out:
            out.append(name)
        if len(out) >= _MAX_MENTIONS:
            break
    return out
