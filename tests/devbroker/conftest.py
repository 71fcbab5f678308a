"""Fixtures for the dev broker tests: a fast-timer broker and raw WebSocket mesh clients.

Nothing here uses the gateway's mesh peer: clients are bare aiohttp WebSockets plus
``claudemesh_gateway.mesh.crypto``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from claudemesh_gateway.devbroker import DevBroker, DevBrokerConfig, MemberInfo
from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.crypto import KeyPair

FRAME_TIMEOUT = 3.0
QUIET = 0.25


def now_ms() -> int:
    return int(time.time() * 1000)


def hello_frame(mesh_id: str, member: MemberInfo, *, session: KeyPair | None = None, session_id: str | None = None,
                ts: Any = None, drop: tuple[str, ...] = (), **over: Any) -> dict[str, Any]:
    assert member.keypair is not None
    ts = now_ms() if ts is None else ts
    frame: dict[str, Any] = {
        "type": "hello", "meshId": mesh_id, "memberId": member.member_id, "pubkey": member.pubkey,
        "sessionPubkey": session.public_hex if session else "", "sessionId": session_id or f"s-{uuid.uuid4()}",
        "pid": 4242, "cwd": "/srv/claudemesh-gateway", "peerType": "connector", "timestamp": ts,
        "signature": member.keypair.sign_hex(crypto.canonical_hello(mesh_id, member.member_id, member.pubkey,
                                                                    int(ts) if isinstance(ts, int) else ts)),
    }
    frame.update(over)
    for key in drop:
        frame.pop(key, None)
    return frame


def session_hello_frame(mesh_id: str, member: MemberInfo, session: KeyPair, *, session_id: str | None = None,
                        ts: Any = None, expires_at: Any = None, drop: tuple[str, ...] = (),
                        **over: Any) -> dict[str, Any]:
    assert member.keypair is not None
    ts = now_ms() if ts is None else ts
    expires_at = now_ms() + 12 * 3600 * 1000 if expires_at is None else expires_at
    att = {"sessionPubkey": session.public_hex, "parentMemberPubkey": member.pubkey, "expiresAt": expires_at,
           "signature": member.keypair.sign_hex(crypto.canonical_attestation(member.pubkey, session.public_hex,
                                                                             expires_at))}
    frame: dict[str, Any] = {
        "type": "session_hello", "meshId": mesh_id, "parentMemberId": member.member_id,
        "parentMemberPubkey": member.pubkey, "sessionPubkey": session.public_hex, "parentAttestation": att,
        "sessionId": session_id or f"s-{uuid.uuid4()}", "pid": 4242, "cwd": "/srv/claudemesh-gateway",
        "peerType": "connector", "timestamp": ts,
        "signature": session.sign_hex(crypto.canonical_session_hello(mesh_id, member.pubkey, session.public_hex, ts)),
    }
    frame.update(over)
    for key in drop:
        frame.pop(key, None)
    return frame


class Client:
    """A raw mesh client. Frames that a ``recv_type`` skips are kept in ``backlog``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, member: MemberInfo | None = None,
                 session: KeyPair | None = None) -> None:
        self.ws = ws
        self.member = member
        self.session = session
        self.backlog: list[dict[str, Any]] = []
        self.ack: dict[str, Any] | None = None
        self.session_id: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.pings = 0

    @property
    def pubkey(self) -> str:
        """The routing key (session pk, else member pk)."""
        if self.session is not None:
            return self.session.public_hex
        assert self.member is not None
        return self.member.pubkey

    @property
    def sender_keypair(self) -> KeyPair:
        if self.session is not None:
            return self.session
        assert self.member is not None and self.member.keypair is not None
        return self.member.keypair

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def _next(self, wait: float) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=wait)
        while msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):   # only with autoping=False
            self.pings += msg.type is aiohttp.WSMsgType.PING
            msg = await self.ws.receive(timeout=wait)
        if msg.type is aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR):
            self.close_code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else self.ws.close_code
            self.close_reason = msg.extra if msg.type is aiohttp.WSMsgType.CLOSE else None
            raise ConnectionError(f"closed: {self.ws.close_code} {msg.extra!r}")
        raise AssertionError(f"unexpected frame {msg!r}")

    async def recv(self, wait: float = FRAME_TIMEOUT) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return await self._next(wait)

    async def recv_match(self, pred: Callable[[dict[str, Any]], bool], wait: float = FRAME_TIMEOUT
                         ) -> dict[str, Any]:
        for i, frame in enumerate(self.backlog):
            if pred(frame):
                return self.backlog.pop(i)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no matching frame; backlog={self.backlog}")
            frame = await self._next(left)
            if pred(frame):
                return frame
            self.backlog.append(frame)

    async def recv_type(self, kind: str, wait: float = FRAME_TIMEOUT) -> dict[str, Any]:
        return await self.recv_match(lambda f: f.get("type") == kind, wait)

    async def recv_push(self, wait: float = FRAME_TIMEOUT) -> dict[str, Any]:
        """The next message push (system events are kept in the backlog)."""
        return await self.recv_match(lambda f: f.get("type") == "push" and f.get("subtype") != "system", wait)

    async def pushes(self, wait: float = QUIET) -> list[dict[str, Any]]:
        """Message pushes (not system events) among everything arriving within ``wait``, backlog included."""
        return [f for f in await self.quiet(wait) if f.get("type") == "push" and f.get("subtype") != "system"]

    async def expect_pushes(self, n: int, wait: float = FRAME_TIMEOUT) -> list[str]:
        """Message ids of at least ``n`` message pushes (waiting up to ``wait``), plus any extras that follow
        within a short quiet period."""
        got = [await self.recv_push(wait) for _ in range(n)]
        got += await self.pushes(QUIET / 2)
        return [f["messageId"] for f in got]

    async def recv_event(self, event: str, wait: float = FRAME_TIMEOUT) -> dict[str, Any]:
        return await self.recv_match(lambda f: f.get("subtype") == "system" and f.get("event") == event, wait)

    async def quiet(self, wait: float = QUIET) -> list[dict[str, Any]]:
        """Everything that arrives within ``wait`` (backlog included); the socket must stay open."""
        frames, self.backlog = list(self.backlog), []
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return frames
            try:
                frames.append(await self._next(left))
            except TimeoutError:
                return frames

    async def request(self, frame: dict[str, Any], reply_type: str, wait: float = FRAME_TIMEOUT
                      ) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv_type(reply_type, wait)

    async def send_msg(self, target: str, *, priority: str = "next", ciphertext: str | None = None,
                       nonce: str | None = None, msg_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """Send and return the ack."""
        msg_id = msg_id or str(uuid.uuid4())
        frame = {"type": "send", "id": msg_id, "client_message_id": msg_id, "targetSpec": target,
                 "priority": priority, "nonce": nonce if nonce is not None else crypto.b64(crypto.random_nonce()),
                 "ciphertext": ciphertext if ciphertext is not None else crypto.v1_encode("hi"), **extra}
        await self.send(frame)
        return await self.recv_match(lambda f: f.get("type") == "ack" and f.get("id") == msg_id)

    async def dm(self, recipient_pubkey: str, text: str, **extra: Any) -> dict[str, Any]:
        nonce, ct = crypto.box_seal(text, recipient_pubkey, self.sender_keypair)
        return await self.send_msg(recipient_pubkey, nonce=nonce, ciphertext=ct, **extra)

    async def wait_closed(self, wait: float = FRAME_TIMEOUT) -> tuple[int | None, str | None]:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("socket still open")
            try:
                self.backlog.append(await self._next(left))
            except ConnectionError:
                return self.close_code, self.close_reason

    async def close(self) -> None:
        await self.ws.close()


Connect = Callable[..., Awaitable[Client]]


def fast_config(**over: Any) -> DevBrokerConfig:
    """Short timers; periodic loops are long so tests drive them explicitly."""
    cfg = DevBrokerConfig(grace_s=0.4, claim_s=0.4, ping_interval_s=3600, pong_timeout_s=0.3,
                          stale_presence_s=3600, sweep_interval_s=3600, purge_interval_s=3600,
                          close_timeout_s=1.0, persist_debounce_s=0.01)
    for key, value in over.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
async def make_broker(tmp_path) -> AsyncIterator[Callable[..., Awaitable[DevBroker]]]:
    brokers: list[DevBroker] = []

    async def factory(state_dir: Any = "tmp", **cfg: Any) -> DevBroker:
        b = DevBroker(tmp_path / "state" if state_dir == "tmp" else state_dir, config=fast_config(**cfg))
        await b.start()
        brokers.append(b)
        return b

    yield factory
    for b in brokers:
        await b.stop()


@pytest.fixture
async def broker(make_broker) -> DevBroker:
    return await make_broker()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def raw_ws(http) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    clients: list[Client] = []

    async def factory(b: DevBroker, url: str | None = None, *, autoping: bool = True) -> Client:
        ws = await http.ws_connect(url or b.ws_url, autoping=autoping, max_msg_size=0)
        c = Client(ws)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        if not c.ws.closed:
            await c.ws.close()


@pytest.fixture
async def connect(raw_ws) -> Connect:
    """``await connect(broker, member, mode="session"|"hello", session=None, session_id=None, **frame_overrides)``:
    a client after its ``hello_ack`` (pushes that came first stay in ``backlog``)."""

    async def factory(b: DevBroker, member: MemberInfo, *, mode: str = "session", session: KeyPair | None = None,
                      session_id: str | None = None, mesh_id: str | None = None, autoping: bool = True,
                      **over: Any) -> Client:
        c = await raw_ws(b, autoping=autoping)
        c.member = member
        mesh_id = mesh_id or member.mesh_id
        if mode == "session":
            c.session = session or KeyPair.generate()
            frame = session_hello_frame(mesh_id, member, c.session, session_id=session_id, **over)
        else:
            c.session = session
            frame = hello_frame(mesh_id, member, session=session, session_id=session_id, **over)
        c.session_id = frame["sessionId"]
        await c.send(frame)
        c.ack = await c.recv_type("hello_ack")
        return c

    return factory


@pytest.fixture
def mk() -> Any:
    """Frame builders for tests (test modules cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(hello=hello_frame, session_hello=session_hello_frame, now_ms=now_ms, fast_config=fast_config)
