"""Upstream clients read what the gateway posts (issue 18).

``UpstreamPeer`` below is an upstream-style claudemesh client written from the spec (A.3.2 hello,
A.12 topics, A.13 REST + sealed keys) with PyNaCl and aiohttp only: it shares no code with the
gateway's key ring, provider or mesh peer. On the dev broker:

- it posts bodyVersion 2 in an encrypted topic and the gateway delivers the plaintext to a webhook;
- a webhook message reaches that topic as bodyVersion 2 and it opens the post with its own sealed copy;
- a member who joins later gets a sealed copy from the gateway's re-seal loop and reads the next post;
- with the default config, a webhook post into an unencrypted topic arrives as bodyVersion 1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import nacl.exceptions
import nacl.secret
import nacl.utils
from nacl.public import Box, PublicKey
from nacl.signing import SigningKey, VerifyKey

from .conftest import signed_post, wait_until

REST_FAST = {"rest": {"reseal_interval": 0.2, "key_retry_interval": 0.2}}


class UpstreamPeer:
    """A CLI-like member: ``hello`` with the member key, topics over WS, sealed keys over REST."""

    def __init__(self, http: aiohttp.ClientSession, ws_url: str, rest_url: str, mesh_id: str, member_id: str,
                 secret_hex: str) -> None:
        self.http, self.ws_url, self.rest_url = http, ws_url, rest_url
        self.mesh_id, self.member_id = mesh_id, member_id
        self.signing = SigningKey(bytes.fromhex(secret_hex)[:32])
        self.pubkey = bytes(self.signing.verify_key).hex()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.topic_keys: dict[str, bytes] = {}

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.ws_url)
        ts = int(time.time() * 1000)
        signed = f"{self.mesh_id}|{self.member_id}|{self.pubkey}|{ts}".encode()
        await self.ws.send_json({
            "type": "hello", "meshId": self.mesh_id, "memberId": self.member_id, "pubkey": self.pubkey,
            "sessionPubkey": "", "sessionId": f"upstream-{uuid.uuid4()}", "pid": 1, "cwd": "/tmp/upstream",
            "peerType": "cli", "timestamp": ts, "signature": self.signing.sign(signed).signature.hex()})
        while True:
            frame = json.loads((await self.ws.receive(timeout=5)).data)
            if frame.get("type") == "hello_ack":
                break
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            for key in ("_reqId", "id"):
                fut = self.replies.get(frame.get(key)) if isinstance(frame.get(key), str) else None
                if fut is not None and not fut.done():
                    fut.set_result(frame)
                    break

    async def request(self, frame: dict[str, Any], *, id_key: str = "_reqId") -> dict[str, Any]:
        assert self.ws is not None
        rid = str(uuid.uuid4())
        fut = self.replies[rid] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({**frame, id_key: rid})
        try:
            return await asyncio.wait_for(fut, 5)
        finally:
            self.replies.pop(rid, None)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=2)

    # -- topics (WS) ---------------------------------------------------------------------------------
    async def create_topic(self, name: str) -> str:
        reply = await self.request({"type": "topic_create", "name": name})
        return reply["topic"]["id"]

    async def join(self, topic_id: str) -> None:
        assert self.ws is not None
        await self.ws.send_json({"type": "topic_join", "topic": topic_id})

    async def post_v2(self, topic_id: str, text: str, key: bytes) -> None:
        nonce = nacl.utils.random(24)
        ct = nacl.secret.SecretBox(key).encrypt(text.encode(), nonce).ciphertext
        ack = await self.request({"type": "send", "targetSpec": "#" + topic_id, "priority": "next",
                                  "nonce": base64.b64encode(nonce).decode(), "ciphertext": base64.b64encode(ct).decode(),
                                  "bodyVersion": 2, "mentions": []}, id_key="id")
        assert ack["type"] == "ack" and ack["queued"] is True

    async def history(self, topic_id: str) -> list[dict[str, Any]]:
        reply = await self.request({"type": "topic_history", "topic": topic_id, "limit": 50})
        return reply["messages"]

    # -- REST (A.13) -----------------------------------------------------------------------------------
    async def rest_key(self, topic: str) -> str:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        reply = await self.request({"type": "apikey_create", "label": "upstream-cli", "capabilities": ["read", "send"],
                                    "topicScopes": [topic], "expiresAt": expires})
        return reply["secret"]

    async def rest(self, method: str, path: str, secret: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        async with self.http.request(method, self.rest_url + path, json=body,
                                     headers={"Authorization": f"Bearer {secret}"}) as resp:
            return resp.status, await resp.json()

    async def fetch_key(self, topic: str) -> tuple[int, dict[str, Any]]:
        """``GET /topics/:name/key``; on 200 the sealed copy is opened and kept in ``topic_keys``."""
        status, body = await self.rest("GET", f"/api/v1/topics/{topic}/key", await self.rest_key(topic))
        if status == 200:
            blob, nonce = base64.b64decode(body["encryptedKey"]), base64.b64decode(body["nonce"])
            box = Box(self.signing.to_curve25519_private_key(), PublicKey(blob[:32]))
            self.topic_keys[topic] = box.decrypt(blob[32:], nonce)
        return status, body

    async def reseal_pass(self, topic: str) -> int:
        """What a key holder does every 30 s: seal our key for each pending member."""
        secret = await self.rest_key(topic)
        _, body = await self.rest("GET", f"/api/v1/topics/{topic}/pending-seals", secret)
        me = self.signing.to_curve25519_private_key()
        for p in body["pending"]:
            nonce = nacl.utils.random(24)
            recipient = VerifyKey(bytes.fromhex(p["pubkey"])).to_curve25519_public_key()
            sealed = bytes(me.public_key) + Box(me, recipient).encrypt(self.topic_keys[topic], nonce).ciphertext
            status, _ = await self.rest("POST", f"/api/v1/topics/{topic}/seal", secret, {
                "memberId": p["memberId"], "encryptedKey": base64.b64encode(sealed).decode(),
                "nonce": base64.b64encode(nonce).decode()})
            assert status == 200
        return len(body["pending"])

    def open_row(self, topic: str, row: dict[str, Any]) -> str | None:
        """What the CLI shows: bodyVersion 1 is base64 text, anything else is v2 (secretbox)."""
        if row["bodyVersion"] == 1:
            return base64.b64decode(row["ciphertext"]).decode()
        key = self.topic_keys.get(topic)
        if key is None:
            return None
        try:
            return nacl.secret.SecretBox(key).decrypt(base64.b64decode(row["ciphertext"]),
                                                      base64.b64decode(row["nonce"])).decode()
        except nacl.exceptions.CryptoError:
            return None  # the CLI's [decrypt failed]


def wh(chat: str, sink) -> dict:
    return {"gateway": "wh", "chat": chat, "options": {"url": sink.url(chat)}}


async def post_inbound(client, chat: str, payload: dict) -> None:
    body, headers = signed_post(payload)
    resp = await client.post(f"/gateways/wh/{chat}", data=body, headers=headers)
    assert resp.status == 200, await resp.text()


async def upstream(http, dev_broker, member) -> UpstreamPeer:
    peer = UpstreamPeer(http, dev_broker.ws_url, dev_broker.rest_url, member.mesh_id, member.member_id,
                        member.secret_hex)
    await peer.connect()
    return peer


async def test_upstream_peer_and_gateway_share_a_sealed_key_topic(e2e_app, sink, dev_broker):
    seed = dev_broker.default_mesh
    async with aiohttp.ClientSession() as http:
        bob = await upstream(http, dev_broker, seed.bob)
        try:
            # bob creates "ops" the upstream way: the broker seals its random key for bob only
            topic_id = await bob.create_topic("ops")
            assert (await bob.fetch_key("ops"))[0] == 200
            client, runtime = await e2e_app([{"name": "ops", "mesh": "dev", "topic": "ops", "binds": [wh("ops", sink)]}],
                                            mesh=REST_FAST)
            gw = runtime.meshes["dev"]
            # the gateway joined the topic but holds no sealed copy yet: it waits, visibly
            await wait_until(lambda: gw.sealed_key_report().get("ops", {}).get("state") == "pending", 10, "pending")
            health = await (await client.get("/-/health")).json()
            assert health["meshes"]["dev"]["topic_keys"]["ops"]["state"] == "pending"
            assert "key_not_sealed_for_member" in health["meshes"]["dev"]["topic_keys"]["ops"]["detail"]

            # 1. bob posts v2; nothing is lost while the gateway waits for its key
            await bob.post_v2(topic_id, "hello from upstream ✓", bob.topic_keys["ops"])
            await asyncio.sleep(0.5)
            assert sink.received["ops"] == []
            assert await bob.reseal_pass("ops") == 1                  # bob seals for the gateway's member
            await wait_until(lambda: sink.received["ops"], 20, "the webhook sink")
            assert sink.texts("ops") == ["bob: hello from upstream ✓"]
            assert gw.sealed_key_report()["ops"]["state"] == "sealed"

            # 2. a webhook message reaches the topic as v2; bob opens it with his own sealed copy
            await post_inbound(client, "ops", {"id": "ci-1", "sender": "CI", "text": "deployed ✓"})
            rows = []

            async def gateway_row() -> bool:
                rows[:] = [r for r in await bob.history(topic_id) if r["senderMemberId"] == seed.gateway.member_id]
                return bool(rows)

            await wait_until_async(gateway_row, "the gateway's post")
            (row,) = rows
            assert row["bodyVersion"] == 2 and "deployed" not in row["ciphertext"]
            assert bob.open_row("ops", row) == "[via wh] CI: deployed ✓"

            # 3. carol joins later: the gateway's re-seal loop seals a copy for her
            carol_info = dev_broker.add_member(seed.mesh_id, "carol")
            carol = await upstream(http, dev_broker, carol_info)
            try:
                await carol.join(topic_id)
                assert (await carol.fetch_key("ops"))[1].get("error") in ("key_not_sealed_for_member", None)

                async def carol_has_key() -> bool:
                    return (await carol.fetch_key("ops"))[0] == 200

                await wait_until_async(carol_has_key, "the gateway to seal the key for carol")
                blob, _ = dev_broker.sealed_topic_key(topic_id, carol_info.member_id)
                gateway_x25519 = bytes(SigningKey(bytes.fromhex(seed.gateway.secret_hex)[:32])
                                       .verify_key.to_curve25519_public_key())
                assert base64.b64decode(blob)[:32] == gateway_x25519      # sealed by the gateway, not by bob
                assert carol.topic_keys["ops"] == bob.topic_keys["ops"]
                await post_inbound(client, "ops", {"id": "ci-2", "sender": "CI", "text": "carol can read this"})

                async def carol_reads() -> bool:
                    texts = [carol.open_row("ops", r) for r in await carol.history(topic_id)]
                    return "[via wh] CI: carol can read this" in texts

                await wait_until_async(carol_reads, "carol to read the next post")
            finally:
                await carol.close()
        finally:
            await bob.close()


async def test_default_config_posts_v1_into_an_unencrypted_topic(e2e_app, sink, dev_broker):
    seed = dev_broker.default_mesh
    client, runtime = await e2e_app([{"name": "general", "mesh": "dev", "topic": "general",
                                      "binds": [wh("general", sink)]}])
    assert runtime.settings.mesh["dev"].topic_settings("general").encryption == "auto"   # nothing configured
    gw = runtime.meshes["dev"]
    assert await gw.effective_encryption("general") == (
        "auto", 1, "the topic has no sealed key (topic_unencrypted): bodyVersion 1")
    await post_inbound(client, "general", {"id": "ci-1", "sender": "CI", "text": "plain for everyone"})
    await wait_until(lambda: any(m.sender_member_id == seed.gateway.member_id
                                 for m in dev_broker.topic_messages(topic_id=seed.general_topic_id)), 20, "the post")
    (row,) = [m for m in dev_broker.topic_messages(topic_id=seed.general_topic_id)
              if m.sender_member_id == seed.gateway.member_id]
    assert row.body_version == 1
    async with aiohttp.ClientSession() as http:
        alice = await upstream(http, dev_broker, seed.alice)
        try:
            (hist,) = [r for r in await alice.history(seed.general_topic_id) if r["id"] == row.id]
            assert alice.open_row("general", hist) == "[via wh] CI: plain for everyone"
        finally:
            await alice.close()


async def wait_until_async(pred, what: str, limit_s: float = 20.0) -> None:
    """``wait_until`` for an async predicate (it talks to the broker)."""
    try:
        async with asyncio.timeout(limit_s):
            while not await pred():  # noqa: ASYNC110 - the state lives in the broker
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit_s}s waiting for {what}") from None
