"""bodyVersion 2 interop: the broker-sealed random topic keys (mesh-protocol.md A.13).

:class:`SealedTopicKeys` is the key ring's :class:`~claudemesh_gateway.mesh.keys.SealedKeyProvider` for
one mesh. Per topic it:

1. mints a short-lived REST API key over WS (``apikey_create``: ``["read","send"]``, scoped to the
   topic, ``rest.key_ttl`` = 5 minutes, as the CLI does) and reuses it until shortly before it expires;
2. fetches ``GET /api/v1/topics/:name/key`` and opens the sealed copy with the member secret
   (``crypto_box_open_easy(blob[32:], nonce, blob[0:32], x25519(member sk))``);
3. keeps the 32-byte key in memory only (never logged, stored or repr'd);
4. while it holds the key, polls ``pending-seals`` every ``rest.reseal_interval`` and ``seal``\\ s the
   key for each pending member, with the member's own ed25519-derived x25519 keypair as the sender.

Outcomes of step 2 become a per-topic state the key ring and ``/-/health`` read:
``sealed`` (v2 key held), ``unencrypted`` (409 ``topic_unencrypted``: the topic is v1),
``pending`` (404 ``key_not_sealed_for_member``: re-asked every ``rest.key_retry_interval`` until a
key holder seals for us) and ``error`` (``api_key_has_no_issuer``, auth or network problems).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from ..errors import MeshError
from . import crypto
from .aio import TaskOwner
from .keys import ERROR, PENDING, SEALED, UNENCRYPTED, UNKNOWN, SealedKeyStatus
from .types import Topic

__all__ = ["RestError", "SealedTopicKeys"]

log = logging.getLogger(__name__)

_HEX64 = frozenset("0123456789abcdef")
Request = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class RestError(MeshError):
    """The web app answered ``status`` with error ``code`` (``0``/``network`` when it could not be reached)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"REST {status or 'unreachable'}: {code}" + (f" ({message})" if message else ""))
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True, repr=False)
class _ApiKey:
    id: str
    secret: str
    expires_at: float  # monotonic


@dataclass(slots=True, repr=False)
class _TopicKey:
    topic: Topic
    state: str = UNKNOWN
    detail: str = "not fetched yet"
    key: bytes | None = None
    api_key: _ApiKey | None = None
    next_check: float = 0.0
    next_reseal: float = 0.0
    checked_at: float | None = None  # wall clock, for health
    sealed_for: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def status(self) -> SealedKeyStatus:
        return SealedKeyStatus(self.state, self.detail)


class SealedTopicKeys(TaskOwner):
    """The sealed-key provider of mesh ``name`` (``topic_key``/``topic_status`` for the key ring)."""

    def __init__(self, name: str, cfg: Any, request: Request, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.cfg = cfg
        self.rest = cfg.rest
        self.base_url: str = cfg.rest_url
        self._request = request
        self._clock = clock
        self._member = cfg.member_keypair()
        self._by_id: dict[str, _TopicKey] = {}
        self._http: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        held = sum(1 for t in self._by_id.values() if t.state == SEALED)
        return f"<SealedTopicKeys {self.name} topics={len(self._by_id)} held={held}>"

    __str__ = __repr__

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the retry / re-seal loop (fetching works without it)."""
        self._start_task(self._run, f"mesh:{self.name}:sealed-keys")

    async def stop(self) -> None:
        await super().stop()
        keys = [st.api_key for st in self._by_id.values() if st.api_key is not None]
        for st in self._by_id.values():
            st.api_key = None
        if keys:  # best effort, as the CLI, and bounded: a leaked key dies within key_ttl anyway
            await asyncio.gather(*(self._revoke(k, timeout=1.0) for k in keys))
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the SealedKeyProvider interface ---------------------------------------------------------------
    def topic_key(self, mesh: str, topic_id: str) -> bytes | None:
        st = self._by_id.get(topic_id) if mesh == self.name else None
        return st.key if st is not None and st.state == SEALED else None

    def topic_status(self, mesh: str, topic_id: str) -> SealedKeyStatus:
        st = self._by_id.get(topic_id) if mesh == self.name else None
        return st.status() if st is not None else SealedKeyStatus(UNKNOWN, "not fetched yet")

    def report(self) -> dict[str, dict[str, Any]]:
        """Per tracked topic name: ``state``, ``detail``, ``checked_at``, ``sealed_for`` (for /-/health)."""
        return {st.topic.name: {"state": st.state, "detail": st.detail, "checked_at": st.checked_at,
                                "sealed_for": st.sealed_for}
                for st in sorted(self._by_id.values(), key=lambda s: s.topic.name)}

    # -- fetching -------------------------------------------------------------------------------------------
    def track(self, topic: Topic) -> None:
        """Keep ``topic`` in the retry / re-seal loop (a bound topic)."""
        if topic.id not in self._by_id:
            self._by_id[topic.id] = _TopicKey(topic)
            self._wake.set()

    async def ensure(self, topic: Topic, *, refresh: bool = False) -> SealedKeyStatus:
        """The topic's key state, fetching the sealed key first when it is not known yet. A topic
        waiting for a seal or in error is re-asked at most every ``rest.key_retry_interval``."""
        self.track(topic)
        st = self._by_id[topic.id]
        async with st.lock:
            if refresh or st.state == UNKNOWN or (st.state in (PENDING, ERROR) and self._clock() >= st.next_check):
                await self._fetch(st)
        return st.status()

    async def _fetch(self, st: _TopicKey) -> None:
        name = st.topic.name
        before = st.state
        try:
            body = await self._call(st, "GET", f"/api/v1/topics/{quote(name, safe='')}/key")
        except RestError as exc:
            self._failed(st, exc)
        except MeshError as exc:  # apikey_create over WS failed (not connected, timeout, refused)
            self._set(st, ERROR, f"cannot mint a REST API key over WS (apikey_create): {exc}")
        else:
            key = None
            if isinstance(body.get("encryptedKey"), str) and isinstance(body.get("nonce"), str):
                key = crypto.open_sealed_topic_key(body["encryptedKey"], body["nonce"], self._member)
            if key is None or len(key) != 32:
                self._set(st, ERROR, "the sealed key returned by GET /key does not open with the member secret "
                                     "(sealed for another key?)")
            else:
                st.key = key
                self._set(st, SEALED, "bodyVersion 2: the sealed topic key is held")
                st.next_reseal = self._clock()
        st.checked_at = time.time()
        if st.state != SEALED:
            st.key = None
            st.next_check = self._clock() + self.rest.key_retry_interval
        if st.state != before:
            level = logging.WARNING if st.state == ERROR else logging.INFO
            log.log(level, "mesh %s: #%s key: %s (%s)", self.name, name, st.state, st.detail)

    def _failed(self, st: _TopicKey, exc: RestError) -> None:
        if exc.code == "topic_unencrypted":
            self._set(st, UNENCRYPTED, "the topic has no sealed key (topic_unencrypted): bodyVersion 1")
        elif exc.code == "key_not_sealed_for_member":
            self._set(st, PENDING, "key_not_sealed_for_member: the topic is encrypted but no member holding its "
                                   "key has sealed a copy for the gateway's member yet; waiting for one to come "
                                   f"online (retried every {self.rest.key_retry_interval:g}s)")
        elif exc.code == "api_key_has_no_issuer":
            self._set(st, ERROR, "api_key_has_no_issuer: the REST API key carries no issuing member, so GET /key "
                                 "cannot tell whose sealed copy to return; the gateway mints its keys over WS as "
                                 "its own member, so rest.url probably points at another deployment's web app")
        elif exc.code == "topic_not_found":
            self._set(st, ERROR, f"the web app at {self.base_url} does not know topic {st.topic.name!r} "
                                 "(rest.url of another deployment?)")
        elif exc.status in (401, 403):
            self._set(st, ERROR, f"the web app refused the gateway's API key ({exc.code})")
        else:
            self._set(st, ERROR, str(exc))

    @staticmethod
    def _set(st: _TopicKey, state: str, detail: str) -> None:
        st.state, st.detail = state, detail

    # -- REST with a minted API key ---------------------------------------------------------------------
    async def _api_key(self, st: _TopicKey) -> _ApiKey:
        now = self._clock()
        margin = min(60.0, self.rest.key_ttl / 5)
        if st.api_key is not None and st.api_key.expires_at - margin > now:
            return st.api_key
        old, st.api_key = st.api_key, None
        if old is not None:
            await self._revoke(old)
        expires = datetime.now(UTC) + timedelta(seconds=self.rest.key_ttl)
        reply = await self._request({
            "type": "apikey_create", "label": f"claudemesh-gateway-{self.name}-{st.topic.name}"[:64],
            "capabilities": ["read", "send"], "topicScopes": [st.topic.name],
            "expiresAt": expires.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        })
        secret, kid = reply.get("secret"), reply.get("id")
        if not isinstance(secret, str) or not secret or not isinstance(kid, str):
            raise MeshError(f"mesh {self.name}: apikey_create reply carries no secret")
        st.api_key = _ApiKey(kid, secret, now + self.rest.key_ttl)
        return st.api_key

    async def _revoke(self, key: _ApiKey, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._request({"type": "apikey_revoke", "id": key.id}), timeout)
        except (MeshError, TimeoutError) as exc:
            log.debug("mesh %s: revoking API key %s failed: %s", self.name, key.id, type(exc).__name__)

    async def _call(self, st: _TopicKey, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        for attempt in (1, 2):
            key = await self._api_key(st)
            try:
                return await self._http_call(method, path, key.secret, body)
            except RestError as exc:
                if exc.status == 401 and attempt == 1:  # expired or revoked under us: mint once more
                    st.api_key = None
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _http_call(self, method: str, path: str, secret: str, body: dict[str, Any] | None) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.rest.request_timeout))
        try:
            async with self._http.request(method, self.base_url + path, json=body,
                                          headers={"Authorization": f"Bearer {secret}"}) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    data = {}
                if resp.status >= 400:
                    code = data.get("error") or data.get("code") or f"http_{resp.status}"
                    message = data.get("hint") or data.get("message") or ""
                    raise RestError(resp.status, str(code).removeprefix("error."), str(message))
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RestError(0, "network", f"{type(exc).__name__} reaching {self.base_url}") from None

    # -- the re-seal loop -------------------------------------------------------------------------------------
    async def _run(self) -> None:
        tick = min(self.rest.reseal_interval, self.rest.key_retry_interval)
        while True:
            self._wake.clear()
            for st in list(self._by_id.values()):
                try:
                    await self._tend(st)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("mesh %s: sealed-key upkeep of #%s failed", self.name, st.topic.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()

    async def _tend(self, st: _TopicKey) -> None:
        async with st.lock:
            now = self._clock()  # after the lock: a fetch that just held it sets next_reseal = now
            if st.state == SEALED:
                if self.rest.reseal and now >= st.next_reseal:
                    st.next_reseal = now + self.rest.reseal_interval
                    await self.reseal(st.topic)
            elif st.state == UNKNOWN or now >= st.next_check:
                await self._fetch(st)
                if st.state == UNENCRYPTED:  # a keyless topic can be claimed later (claim-key): look again
                    st.next_check = self._clock() + self.rest.key_retry_interval

    async def reseal(self, topic: Topic) -> int:
        """One ``pending-seals`` pass: seal the key we hold for each pending member. Returns how many."""
        st = self._by_id.get(topic.id)
        if st is None or st.key is None:
            return 0
        base = f"/api/v1/topics/{quote(topic.name, safe='')}"
        try:
            reply = await self._call(st, "GET", base + "/pending-seals")
        except (RestError, MeshError) as exc:
            log.warning("mesh %s: #%s pending-seals failed: %s", self.name, topic.name, exc)
            return 0
        pending = reply.get("pending")
        sealed = 0
        for entry in pending if isinstance(pending, list) else []:
            if not isinstance(entry, dict):
                continue
            member_id, pubkey = entry.get("memberId"), entry.get("pubkey")
            if (not isinstance(member_id, str) or member_id == self.cfg.member_id or not isinstance(pubkey, str)
                    or len(pubkey) != 64 or not set(pubkey) <= _HEX64):
                continue
            try:
                blob, nonce = crypto.seal_topic_key(st.key, pubkey, self._member.x25519_private)
            except (ValueError, TypeError):
                log.warning("mesh %s: #%s: member %s has an invalid pubkey; not sealed", self.name, topic.name,
                            member_id)
                continue
            try:
                await self._call(st, "POST", base + "/seal",
                                 {"memberId": member_id, "encryptedKey": blob, "nonce": nonce})
            except (RestError, MeshError) as exc:
                log.warning("mesh %s: #%s: sealing the key for %s failed: %s", self.name, topic.name,
                            entry.get("displayName") or member_id, exc)
                continue
            sealed += 1
            st.sealed_for += 1
            log.info("mesh %s: #%s: sealed the topic key for %s", self.name, topic.name,
                     entry.get("displayName") or member_id)
        return sealed

