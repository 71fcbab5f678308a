"""Issue 16, WhatsApp capability URLs (``/gateways/<name>/media/<token>``, the bytes offered to Twilio):
unguessable tokens, expiry, no path traversal, and they survive a restart (persisted in the gateway's
store through its kv, not held in memory)."""

from __future__ import annotations

import re
from typing import Any

from claudemesh_gateway import Address, Attachment, Message, Outbound
from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
from claudemesh_gateway.plugins.whatsapp.media import MediaStore
from claudemesh_gateway.testing import build_test_app

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def png(data: bytes = PNG) -> Attachment:
    return Attachment(name="cat.png", content_type="image/png", data=data)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SpyKV:
    """A kv that records every key read (to show a bad token never reaches the store)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.reads: list[str] = []

    async def kv_get(self, key: str) -> Any:
        self.reads.append(key)
        return self.data.get(key)

    async def kv_set(self, key: str, value: Any) -> None:
        self.data[key] = value

    async def kv_delete(self, key: str) -> None:
        self.data.pop(key, None)


async def _offer(wa: Any, wh: Any, data: bytes = PNG) -> str:
    await wa.open_window()
    await wa.gateway.send(wa.outbound("[alice] look", attachments=(png(data),)))
    (url,) = wa.twilio.last()["MediaUrl"]
    return url[len(wh.PUBLIC_URL):]


async def test_capability_tokens_are_unguessable(wa, wh):
    tokens = set()
    for i in range(20):
        path = await _offer(wa, wh, PNG + bytes([i]))
        tokens.add(path.rsplit("/", 1)[1])
    assert len(tokens) == 20                                    # never reused for another file
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", t) for t in tokens)   # 32 random bytes, url-safe
    token = next(iter(tokens))
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert (await wa.client.get(f"/gateways/{wh.NAME}/media/{flipped}")).status == 404
    assert (await wa.client.get(f"/gateways/{wh.NAME}/media/{token}")).status == 200


async def test_capability_urls_expire_and_the_bytes_leave_the_store(make_wa, wh):
    wa = await make_wa(media_ttl=60)
    clock = Clock()
    wa.gateway.media.clock = clock
    path = await _offer(wa, wh)
    token = path.rsplit("/", 1)[1]
    assert any(token in k for k in wa.ctx.kv)                  # in the store, not only in memory
    clock.now += 59
    assert (await wa.client.get(path)).status == 200
    clock.now += 2
    assert (await wa.client.get(path)).status == 404
    assert not any(token in k for k in wa.ctx.kv)              # expired: its bytes are deleted too
    assert token not in str(wa.ctx.kv.get("media-index"))


async def test_capability_urls_refuse_path_traversal_and_odd_tokens():
    kv = SpyKV()
    store = MediaStore(kv, ttl=60, max_bytes=1 << 20)
    token = await store.put(PNG, "image/png")
    assert token is not None
    kv.reads.clear()
    for bad in ("../media-index", "..%2F..%2Fetc%2Fpasswd", "media-index", "index", "", "/", token + "x",
                token[:-1], token[:-1] + "/", token.replace(token[0], "."), "\x00" * 43, "%2e%2e" * 8):
        assert await store.get(bad) is None, bad
    assert kv.reads == []                                      # none of them even reached the store
    assert (await store.get(token)).data == PNG


async def test_capability_urls_refuse_path_traversal_over_http(wa, wh):
    path = await _offer(wa, wh)
    for other in ("..%2F..%2Fstatus", "..%2Fmedia-index", "media-index", "%2e%2e%2f" + "A" * 40,
                  path.rsplit("/", 1)[1] + "%2F..", "A" * 43 + "%00"):
        resp = await wa.client.get(f"/gateways/{wh.NAME}/media/{other}")
        assert resp.status == 404, other
    assert (await wa.client.get(path)).status == 200


async def test_capability_urls_survive_a_gateway_restart(make_wa, wh):
    wa = await make_wa()
    path = await _offer(wa, wh)
    await wa.gateway.stop()
    # a new instance on the same store (the kv of this gateway), as after a restart of the process
    again = WhatsAppGateway(wh.NAME, wa.gateway.config, wa.ctx)
    token = path.rsplit("/", 1)[1]
    entry = await again.media.get(token)
    assert entry is not None and entry.data == PNG and entry.content_type == "image/png"
    # and a restart after the deadline finds it gone: purged from the store at start
    later = WhatsAppGateway(wh.NAME, wa.gateway.config, wa.ctx)
    later.media.clock = Clock(entry.expires + 1)
    assert await later.media.purge() == 1
    assert not any(token in k for k in wa.ctx.kv) and await later.media.get(token) is None


async def test_capability_urls_survive_an_app_restart_with_the_real_store(tmp_path, monkeypatch, wh):
    """The whole app twice on one state directory (SQLite store): a URL offered before the restart is
    served after it."""
    fake = wh.FakeTwilio()
    await fake.server.start_server()
    monkeypatch.setattr(WhatsAppGateway, "http_client_class", wh.fake_http_class(fake.url))
    cfg = {"gateways": {"wa": {"type": "whatsapp", **wh.default_config()}},
           "routes": [{"name": "pair", "binds": [{"gateway": "wa", "chat": wh.USER},
                                                 {"gateway": "wa", "chat": wh.OTHER}]}]}
    try:
        client, runtime = await build_test_app(cfg, state_dir=tmp_path)
        gw = runtime.gateways["wa"]
        await gw.ctx.kv_set(f"window:{wh.USER}", 1e12)  # the 24-hour window is open
        msg = Message(id="mesh:demo:m1", origin=Address("mesh", "demo:#ops"), sender="alice", text="hello")
        await gw.send(Outbound(message=msg, to=Address("wa", wh.USER), text="[alice] look",
                               attachments=(png(),), idempotency_key="k1"))
        (url,) = fake.last()["MediaUrl"]
        path = url[len(wh.PUBLIC_URL):]
        assert (await client.get(path)).status == 200
        await client.close()

        client, _ = await build_test_app(cfg, state_dir=tmp_path)
        try:
            resp = await client.get(path)
            assert resp.status == 200 and await resp.read() == PNG
            assert (await client.get(path[:-1] + "x")).status == 404
        finally:
            await client.close()
    finally:
        await fake.server.close()
