"""Part B transport: B.1–B.5."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest


async def _raw_upgrade(host: str, port: int, target: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(1024), 3)
    writer.close()
    return data


async def test_b01_upgrade_only_exact_ws_target(broker, http):
    host, port = "127.0.0.1", broker.port
    assert (await _raw_upgrade(host, port, "/ws")).startswith(b"HTTP/1.1 101")
    for target in ("/ws?x", "/ws/", "/other", "/"):
        assert await _raw_upgrade(host, port, target) == b"", target   # destroyed, no HTTP response at all
    with pytest.raises(aiohttp.ClientError):
        await http.ws_connect(broker.ws_url + "?x")
    ws = await http.ws_connect(broker.ws_url)      # no auth at upgrade
    assert not ws.closed
    await ws.close()


async def test_b02_frame_limit_1009_and_binary_utf8(broker, raw_ws):
    c = await raw_ws(broker)
    exact = json.dumps({"type": "list_peers", "pad": ""})
    exact = json.dumps({"type": "list_peers", "pad": "x" * (65_536 - len(exact))})
    assert len(exact.encode()) == 65_536
    await c.send(exact)                           # exactly at the limit: accepted (no_hello reply)
    assert (await c.recv())["code"] == "no_hello"
    await c.ws.send_bytes(json.dumps({"type": "list_peers"}).encode())   # binary UTF-8 JSON accepted
    msg = await c.ws.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data)["code"] == "no_hello"
    await c.send("x" * 65_537)
    code, _ = await c.wait_closed()
    assert code == 1009


async def test_b03_silence_on_malformed_unknown_and_handler_errors(broker, connect):
    seed = broker.default_mesh
    c = await connect(broker, seed.gateway)
    for frame in ("{not json", "[1,2]", '"str"', json.dumps({"type": "no_such_verb", "_reqId": "u"}),
                  json.dumps({"type": "topic_create", "_reqId": "t"}),          # handler error: no name
                  json.dumps({"type": "send", "id": "s1", "priority": "next"}),   # no targetSpec: throws
                  json.dumps({"type": "send", "id": "s2", "targetSpec": "*", "priority": "urgent",
                              "nonce": "", "ciphertext": ""})):                   # invalid priority: throws
        await c.send(frame)
    assert await c.quiet() == []
    reply = await c.request({"type": "list_peers", "_reqId": "alive"}, "peers_list")
    assert reply["_reqId"] == "alive"


async def test_b04_no_hello_before_presence(broker, raw_ws, mk):
    c = await raw_ws(broker)
    await c.send({"type": "list_peers", "_reqId": "r1"})
    err = await c.recv()
    assert err == {"type": "error", "code": "no_hello", "message": "must send hello first"}
    # a hello whose presence insert fails (no cwd) leaves the socket without a presence
    seed = broker.default_mesh
    await c.send(mk.hello(seed.mesh_id, seed.gateway, drop=("cwd",)))
    await c.send({"type": "topic_list"})
    assert (await c.recv())["code"] == "no_hello"


async def test_b05_each_request_gets_its_reply(broker, connect):
    seed = broker.default_mesh
    c = await connect(broker, seed.gateway)
    for i in range(5):
        await c.send({"type": "list_peers", "_reqId": f"p{i}"})
        await c.send({"type": "topic_list", "_reqId": f"t{i}"})
    got = [await c.recv() for _ in range(10)]
    assert sorted(f["_reqId"] for f in got) == sorted([f"p{i}" for i in range(5)] + [f"t{i}" for i in range(5)])


def _masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _read_text_frames(reader: asyncio.StreamReader, count: int) -> list[dict]:
    frames = []
    while len(frames) < count:
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), 3)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        data = await reader.readexactly(n)
        if b0 & 0x0F == 0x1:
            frames.append(json.loads(data))
    return frames


async def test_b04_no_hello_while_hello_in_flight(broker, mk):
    """hello and list_peers in one TCP write: the second frame arrives while the hello is in flight."""
    seed = broker.default_mesh
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101")
    hello = json.dumps(mk.hello(seed.mesh_id, seed.gateway)).encode()
    writer.write(_masked_text_frame(hello) + _masked_text_frame(b'{"type":"list_peers","_reqId":"early"}'))
    await writer.drain()
    frames = await _read_text_frames(reader, 2)
    assert sorted(f["type"] for f in frames) == ["error", "hello_ack"]
    assert next(f for f in frames if f["type"] == "error") == {"type": "error", "code": "no_hello",
                                                                "message": "must send hello first"}
    writer.close()
