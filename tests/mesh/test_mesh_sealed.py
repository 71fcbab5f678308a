"""SealedTopicKeys (A.13) against a loopback fake of the web app's REST API, on the spec's vectors:
the sealed_topic_key vector opens to the topic key, v2_body reproduces byte for byte through the
key ring, each GET /key outcome becomes a clear state, and the re-seal loop seals for pending members."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web
from claudemesh_gateway.keys import KeyRing, KeyRingError
from claudemesh_gateway.mesh import crypto
from claudemesh_gateway.mesh.config import MeshConfig
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.mesh.sealed import SealedTopicKeys
from claudemesh_gateway.mesh.types import Topic

TOPIC = Topic(id="T" * 32, name="team")
SECRET = "cm_" + "s" * 43


class FakeWebApp:
    """``GET /api/v1/topics/team/key``, ``pending-seals`` and ``seal``, answering what ``script`` says."""

    def __init__(self, vectors: dict[str, Any]) -> None:
        self.sealed = vectors["sealed_topic_key"]
        self.key_answer: tuple[int, dict[str, Any]] = (200, {
            "topic": "team", "topicId": TOPIC.id, "encryptedKey": self.sealed["encryptedKey_b64"],
            "nonce": self.sealed["nonce_b64"], "senderPubkey": "ignored", "createdAt": "2026-01-01T00:00:00.000Z"})
        self.pending: list[dict[str, Any]] = []
        self.seals: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.invalid_once = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/topics/{name}/key", self.key)
        app.router.add_get("/api/v1/topics/{name}/pending-seals", self.pending_seals)
        app.router.add_post("/api/v1/topics/{name}/seal", self.seal)
        return app

    def _authed(self, request: web.Request) -> web.Response | None:
        self.auth.append(request.headers.get("Authorization", ""))
        if self.invalid_once:
            self.invalid_once = False
            return web.json_response({"code": "error.api_key_invalid", "message": "x", "status": 401,
                                      "timestamp": "t", "path": request.path}, status=401)
        return None

    async def key(self, request: web.Request) -> web.Response:
        status, body = self.key_answer
        return self._authed(request) or web.json_response(body, status=status)

    async def pending_seals(self, request: web.Request) -> web.Response:
        return self._authed(request) or web.json_response({"topic": "team", "topicId": TOPIC.id, "senderPubkey": "x",
                                                           "pending": self.pending})

    async def seal(self, request: web.Request) -> web.Response:
        self.seals.append(await request.json())
        self.pending = []
        return self._authed(request) or web.json_response({"topic": "team", "memberId": self.seals[-1]["memberId"]})


class Minter:
    """The WS side: ``apikey_create`` / ``apikey_revoke`` replies."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def __call__(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.frames.append(frame)
        if frame["type"] == "apikey_create":
            return {"type": "apikey_created", "id": f"k{len(self.frames)}", "secret": SECRET}
        return {"type": "apikey_revoke_response", "status": "revoked"}


@pytest.fixture
async def fake(aiohttp_server, mesh_vectors):
    webapp = FakeWebApp(mesh_vectors)
    server = await aiohttp_server(webapp.app())
    webapp.url = str(server.make_url("")).rstrip("/")
    return webapp


def _cfg(mesh_vectors: dict[str, Any], url: str, **rest: Any) -> MeshConfig:
    member = mesh_vectors["keys"]["member"]
    return MeshConfig(broker_url="ws://127.0.0.1:1/ws", mesh_id=mesh_vectors["inputs"]["meshId"], member_id="me",
                      secret_key=member["ed25519_secret_key_64_hex"],
                      rest={"url": url, "reseal_interval": 0.05, "key_retry_interval": 0.05, **rest})


@pytest.fixture
async def provider(fake, mesh_vectors):
    minter = Minter()
    cfg = _cfg(mesh_vectors, fake.url)
    p = SealedTopicKeys("m", cfg, minter)
    ring = KeyRing.from_configs({"m": cfg})
    ring.set_sealed_key_provider(p, mesh="m")
    p.minter, p.ring = minter, ring
    try:
        yield p
    finally:
        await p.stop()


async def test_sealed_key_vector_opens_and_v2_body_vector_reproduces(provider, fake, mesh_vectors, caplog):
    caplog.set_level(logging.DEBUG)
    await provider.start()
    status = await provider.ensure(TOPIC)
    assert status.state == "sealed"
    assert provider.topic_key("m", TOPIC.id).hex() == mesh_vectors["sealed_topic_key"]["topic_key_hex"]
    # the API key was minted as the CLI does: 5 minutes, read+send, scoped to the topic
    (mint,) = [f for f in provider.minter.frames if f["type"] == "apikey_create"]
    assert mint["capabilities"] == ["read", "send"] and mint["topicScopes"] == ["team"]
    assert mint["expiresAt"].endswith("Z") and fake.auth[0] == f"Bearer {SECRET}"
    # v2_body, byte for byte, through the key ring: open with the held key; seal gives bodyVersion 2
    v2 = mesh_vectors["v2_body"]
    assert provider.ring.open("m", TOPIC.id, "team", v2["nonce_b64"], v2["ciphertext_b64"], 2) == v2["plaintext_utf8"]
    nonce, ct, bv = provider.ring.seal("m", TOPIC.id, "team", v2["plaintext_utf8"])
    assert bv == 2 and crypto.secretbox_open(nonce, ct, bytes.fromhex(v2["topic_key_hex"])) == v2["plaintext_utf8"]
    assert crypto.secretbox_seal(v2["plaintext_utf8"], provider.topic_key("m", TOPIC.id),
                                 crypto.unb64(v2["nonce_b64"])) == (v2["nonce_b64"], v2["ciphertext_b64"])
    # drained pushes (A.9 step 4) try the held v2 key too
    assert provider.ring.try_all_topic_keys("m", v2["nonce_b64"], v2["ciphertext_b64"], [(TOPIC.id, "team")]) == (
        TOPIC.id, v2["plaintext_utf8"])
    # the key and the API key secret appear in no repr and no log line
    text = repr(provider) + repr(provider.ring) + str(provider.report()) + caplog.text
    assert v2["topic_key_hex"] not in text and SECRET not in text


@pytest.mark.parametrize(("status", "body", "state", "needle"), [
    (409, {"error": "topic_unencrypted", "topic": "team", "hint": "legacy"}, "unencrypted", "bodyVersion 1"),
    (404, {"error": "key_not_sealed_for_member", "topic": "team"}, "pending", "key_not_sealed_for_member"),
    (400, {"error": "api_key_has_no_issuer"}, "error", "api_key_has_no_issuer"),
    (404, {"error": "topic_not_found", "topic": "team"}, "error", "does not know topic 'team'"),
    (500, {}, "error", "http_500"),
])
async def test_each_key_outcome_is_a_clear_state(provider, fake, status, body, state, needle):
    fake.key_answer = (status, body)
    got = await provider.ensure(TOPIC)
    assert got.state == state and needle in got.detail
    assert provider.report()["team"]["state"] == state
    if state == "unencrypted":
        assert provider.ring.seal("m", TOPIC.id, "team", "hi")[2] == 1        # auto: the topic is v1
        return
    with pytest.raises(KeyRingError) as info:                                 # auto never posts in the clear
        provider.ring.seal("m", TOPIC.id, "team", "hi")
    assert info.value.transient and needle.split()[0] in str(info.value)


async def test_pending_is_retried_until_sealed(provider, fake):
    fake.key_answer, good = (404, {"error": "key_not_sealed_for_member"}), fake.key_answer
    assert (await provider.ensure(TOPIC)).state == "pending"
    fake.key_answer = good                       # a key holder sealed a copy for us
    await provider.start()                       # the loop re-asks every key_retry_interval
    async with asyncio.timeout(5):
        while provider.topic_status("m", TOPIC.id).state != "sealed":  # noqa: ASYNC110 - state of the loop
            await asyncio.sleep(0.02)


async def test_an_invalid_api_key_is_minted_again_once(provider, fake):
    fake.invalid_once = True
    assert (await provider.ensure(TOPIC)).state == "sealed"
    assert len([f for f in provider.minter.frames if f["type"] == "apikey_create"]) == 2


async def test_reseal_loop_seals_for_pending_members(provider, fake, mesh_vectors):
    peer = KeyPair.from_secret_hex(mesh_vectors["keys"]["peer"]["ed25519_secret_key_64_hex"])
    fake.pending = [{"memberId": "m-peer", "pubkey": peer.public_hex, "displayName": "peer"},
                    {"memberId": "me", "pubkey": peer.public_hex, "displayName": "ourselves"},    # skipped
                    {"memberId": "m-bad", "pubkey": "zz", "displayName": "bad"}]                 # skipped
    await provider.ensure(TOPIC)
    await provider.start()
    async with asyncio.timeout(5):
        while not fake.seals:  # noqa: ASYNC110 - the re-seal loop runs in its own task
            await asyncio.sleep(0.02)
    (seal,) = fake.seals
    assert seal["memberId"] == "m-peer"
    blob = crypto.unb64(seal["encryptedKey"])
    member = KeyPair.from_secret_hex(mesh_vectors["keys"]["member"]["ed25519_secret_key_64_hex"])
    assert len(blob) == 80 and blob[:32] == bytes(member.x25519_public)   # our own ed25519-derived sender key
    opened = crypto.open_sealed_topic_key(seal["encryptedKey"], seal["nonce"], peer)
    assert opened.hex() == mesh_vectors["sealed_topic_key"]["topic_key_hex"]
    assert provider.report()["team"]["sealed_for"] == 1


async def test_stop_revokes_the_minted_keys(provider, fake):
    await provider.start()
    await provider.ensure(TOPIC)
    await provider.stop()
    assert [f["type"] for f in provider.minter.frames] == ["apikey_create", "apikey_revoke"]


async def test_reseal_can_be_turned_off(fake, mesh_vectors):
    peer = KeyPair.from_secret_hex(mesh_vectors["keys"]["peer"]["ed25519_secret_key_64_hex"])
    fake.pending = [{"memberId": "m-peer", "pubkey": peer.public_hex, "displayName": "peer"}]
    p = SealedTopicKeys("m", _cfg(mesh_vectors, fake.url, reseal=False), Minter())
    try:
        assert (await p.ensure(TOPIC)).state == "sealed"
        await p.start()
        await asyncio.sleep(0.3)  # several loop ticks (reseal_interval 0.05 s)
        assert fake.seals == [] and p.topic_key("m", TOPIC.id) is not None
    finally:
        await p.stop()


async def test_first_reseal_follows_the_first_fetch_at_once(fake, mesh_vectors):
    """With the default 30 s intervals, members waiting when the gateway starts are sealed for right
    after the key is fetched, not one interval later (the loop was already waiting when the topic came)."""
    peer = KeyPair.from_secret_hex(mesh_vectors["keys"]["peer"]["ed25519_secret_key_64_hex"])
    fake.pending = [{"memberId": "m-peer", "pubkey": peer.public_hex, "displayName": "peer"}]
    p = SealedTopicKeys("m", _cfg(mesh_vectors, fake.url, reseal_interval=30, key_retry_interval=30), Minter())
    try:
        await p.start()
        await asyncio.sleep(0.05)          # the loop found nothing to do and waits
        assert (await p.ensure(TOPIC)).state == "sealed"
        async with asyncio.timeout(5):
            while not fake.seals:  # noqa: ASYNC110 - the re-seal loop runs in its own task
                await asyncio.sleep(0.02)
    finally:
        await p.stop()
