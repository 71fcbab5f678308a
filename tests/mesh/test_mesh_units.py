"""Unit tests: token bucket, ack classification, time parsing, kv stores, session identity, poller paging."""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import types

import pytest
from claudemesh_gateway.mesh import JsonFileKV, MemoryKV, MeshConfig
from claudemesh_gateway.mesh.crypto import KeyPair
from claudemesh_gateway.mesh.handshake import classify_refusal
from claudemesh_gateway.mesh.keys import KeyRing
from claudemesh_gateway.mesh.poller import TopicPoller
from claudemesh_gateway.mesh.ratelimit import TokenBucket
from claudemesh_gateway.mesh.sender import classify_ack_error
from claudemesh_gateway.mesh.state import load_session_identity
from claudemesh_gateway.mesh.types import Peer, Topic, parse_time_ms


def test_token_bucket_burst_then_refill():
    now = [100.0]
    b = TokenBucket(10, 60, clock=lambda: now[0])
    for _ in range(10):
        assert b.wait_time() == 0
        b._tokens -= 1
    assert b.wait_time() == pytest.approx(1.0)
    now[0] += 0.5
    assert b.wait_time() == pytest.approx(0.5)
    now[0] += 100
    assert b.tokens == 10  # capped at the burst
    b.drain()
    assert b.tokens == 0


async def test_token_bucket_acquire_waits():
    b = TokenBucket(2, 600)  # 10/s
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(4):
        await b.acquire()
    assert loop.time() - t0 >= 0.15


@pytest.mark.parametrize("error,kind", [
    ("rate_limit: max 60 msg/min (burst 10) — slow down", "rate_limit"),
    ("payload too large: 70000 bytes > MAX_MESSAGE_BYTES=65536", "too_large"),
    ("no connected peer for target (not online, or targetSpec is your own key without another session)", "no_peer"),
    ("blocked by recipient grants (sender lacks dm capability)", "blocked"),
    ("something new", "unknown"),
])
def test_classify_ack_error(error, kind):
    assert classify_ack_error(error) == kind


def test_classify_refusal_messages():
    assert classify_refusal("unauthorized", "pubkey not found in mesh").action == "terminal"
    assert "clock skew: fix the system clock" in classify_refusal("timestamp_skew").human
    assert classify_refusal("capacity").action == "capacity"
    assert classify_refusal("bad_signature", "attestation rejected: bad_signature").action == "attestation"
    assert classify_refusal("weird").action == "retry"


def test_parse_time_ms():
    assert parse_time_ms("2026-01-02T03:04:05.678Z") == 1767323045678
    assert parse_time_ms(1767323045678) == 1767323045678
    assert parse_time_ms("nonsense") == 0 and parse_time_ms(None) == 0 and parse_time_ms(True) == 0


def test_peer_tags_from_groups_profile_and_role_tag():
    p = Peer.from_wire({"pubkey": "a" * 64, "displayName": "A", "groups": [{"name": "Repo:Billing"}, "ops"],
                        "profile": {"tags": ["oncall"], "roleTag": "lead"}})
    assert p.tags() == {"repo:billing", "ops", "oncall", "lead"}
    assert Peer.from_wire({"pubkey": "b" * 64}, frozenset({"b" * 64})).is_self


async def test_json_file_kv_persists_with_0600(tmp_path):
    path = tmp_path / "state" / "kv.json"
    kv = JsonFileKV(path)
    await kv.kv_set("mesh", "k", {"a": [1, 2]})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = JsonFileKV(path)
    assert await again.kv_get("mesh", "k") == {"a": [1, 2]}
    assert await again.kv_get("mesh", "missing") is None
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not readable JSON"):
        JsonFileKV(path)


async def test_session_identity_persisted_per_member():
    kv = MemoryKV()
    member = KeyPair.generate().public_hex
    one = await load_session_identity(kv, "m", member)
    two = await load_session_identity(kv, "m", member)
    assert (one.session_id, one.pubkey) == (two.session_id, two.pubkey) and one.session_id.startswith("gw-")
    assert one.keypair.secret_hex not in repr(one)
    other = await load_session_identity(kv, "m", KeyPair.generate().public_hex)  # key rotated: new identity
    assert other.pubkey != one.pubkey
    eph = await load_session_identity(kv, "m", member, ephemeral=True)
    assert eph.session_id.startswith("gw-cli-") and not eph.persisted
    stored = str(kv.data)
    assert eph.keypair.secret_hex not in stored


# -- poller paging against a fake topic_history with strict-< beforeId semantics -------------------------------
class FakeHistory:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.requests: list[dict] = []
        self.state = "connected"

    def add(self, n: int, t: int, prefix: str) -> list[str]:
        ids = [f"{prefix}{i:04d}" for i in range(n)]
        self.rows += [{"id": i, "createdAt": t, "senderPubkey": "c" * 64, "senderMemberId": "other",
                       "senderName": "carol", "nonce": "", "ciphertext": _b64(i), "bodyVersion": 1} for i in ids]
        return ids

    async def wait_connected(self, timeout=None):
        return None

    async def request(self, frame):
        self.requests.append(frame)
        rows = sorted(self.rows, key=lambda r: (r["createdAt"], r["id"]), reverse=True)
        if "beforeId" in frame:
            anchor = next((r for r in rows if r["id"] == frame["beforeId"]), None)
            rows = [] if anchor is None else [r for r in rows if r["createdAt"] < anchor["createdAt"]]
        return {"type": "topic_history_response", "messages": rows[: frame["limit"]]}


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _fake_peer(history: FakeHistory, kv) -> types.SimpleNamespace:
    cfg = MeshConfig(broker_url="ws://127.0.0.1:1/ws", mesh_id="M" * 32, member_id="me",
                     secret_key=KeyPair.generate().secret_hex, root_key=secrets.token_urlsafe(32))
    return types.SimpleNamespace(name="fake", cfg=cfg, kv=kv, keyring=KeyRing.from_configs({"fake": cfg}),
                                 own_keys=frozenset({cfg.member_pubkey}), connection=history)


async def test_poller_pages_back_through_timestamp_ties_without_loss_or_duplicates():
    hist = FakeHistory()
    hist.add(10, 1_000, "old")
    kv = MemoryKV()
    got: list[str] = []

    async def on_row(item):
        got.append(item.text)

    poller = TopicPoller(_fake_peer(hist, kv), Topic(id="T" * 32, name="t"), on_row)
    poller.watch_started_ms = 10**15  # nothing counts as "posted after the watch" in this test
    assert await poller.poll_once() == 0  # first run: start at now
    # 330 new rows: 200 in triples sharing a millisecond, then 70 sharing one (more than a
    # default page), 3, and 57 sharing the newest millisecond (the whole first page ties)
    p = [x for k in range(67) for x in hist.add(3, 1_500 + k, f"p{k:03d}-")][:201]
    a = hist.add(70, 2_000, "a")
    b = hist.add(3, 2_001, "b")
    c = hist.add(57, 2_002, "c")
    assert await poller.poll_once() == len(p) + 130
    assert got == p + a + b + c  # oldest first; ties by id; nothing lost, nothing twice
    assert any("beforeId" in r for r in hist.requests)
    # nothing new: nothing delivered again; a restart with the same kv resumes at the cursor
    assert await poller.poll_once() == 0
    d = hist.add(2, 2_003, "d")
    again = TopicPoller(_fake_peer(hist, kv), Topic(id="T" * 32, name="t"), on_row)
    assert await again.poll_once() == 2
    assert got == p + a + b + c + d


async def test_poller_first_run_backfill_and_own_rows():
    hist = FakeHistory()
    ids = hist.add(5, 1_000, "x")
    got = []

    async def on_row(item):
        got.append(item.id)

    peer = _fake_peer(hist, MemoryKV())
    poller = TopicPoller(peer, Topic(id="T" * 32, name="t"), on_row, backfill=2)
    poller.watch_started_ms = 10**15
    await poller.poll_once()
    assert got == ids[-2:]
    hist.rows.append({**hist.rows[0], "id": "mine", "createdAt": 5_000, "senderMemberId": "me"})
    await poller.poll_once()
    assert got == ids[-2:] and poller.echoes == 1  # our own member's row is recorded, not delivered


async def test_poller_keeps_cursor_when_on_message_fails():
    hist = FakeHistory()
    peer = _fake_peer(hist, MemoryKV())
    fail = [True]
    got = []

    async def on_row(item):
        if fail[0]:
            raise RuntimeError("store down")
        got.append(item.id)

    poller = TopicPoller(peer, Topic(id="T" * 32, name="t"), on_row)
    poller.watch_started_ms = 10**15
    await poller.poll_once()
    ids = hist.add(3, 3_000, "y")
    with pytest.raises(RuntimeError):
        await poller.poll_once()
    fail[0] = False
    await poller.poll_once()
    assert got == ids


async def test_poller_hands_a_poll_over_in_batches_with_on_rows():
    """With ``on_rows`` the new rows go over 50 at a time, oldest first, echoes left out; a batch that
    fails is handed over again on the next poll, the batches before it are not."""
    from claudemesh_gateway.mesh.poller import HAND_OVER_BATCH

    hist = FakeHistory()
    peer = _fake_peer(hist, MemoryKV())
    calls: list[list[str]] = []
    fail_at = [2]

    async def on_rows(items):
        if len(calls) == fail_at[0]:
            fail_at[0] = -1
            raise RuntimeError("store down")
        calls.append([i.id for i in items])

    async def on_row(item):
        raise AssertionError("on_rows takes the rows")

    poller = TopicPoller(peer, Topic(id="T" * 32, name="t"), on_row, on_rows=on_rows)
    poller.watch_started_ms = 10**15
    await poller.poll_once()
    ids = [x for k in range(130) for x in hist.add(1, 3_000 + k, f"y{k:03d}-")]
    hist.rows.append({**hist.rows[-1], "id": "mine", "createdAt": 3_100, "senderMemberId": "me"})
    with pytest.raises(RuntimeError):
        await poller.poll_once()
    assert calls == [ids[:50], ids[50:100]]
    assert HAND_OVER_BATCH == 50
    await poller.poll_once()
    assert calls[2:] == [ids[100:130]]  # the failed batch again (its echo, by time the 101st row, left out)
    assert poller.echoes == 2  # counted at each reading
    assert sum(map(len, calls)) == len(ids) and poller.delivered == len(ids)


async def test_poller_batch_stops_at_a_row_that_waits_for_its_key():
    from claudemesh_gateway.mesh.poller import KeyWait

    hist = FakeHistory()
    peer = _fake_peer(hist, MemoryKV())
    peer.sealed = types.SimpleNamespace(ensure=_waiting)
    calls: list[list[str]] = []

    async def on_rows(items):
        calls.append([i.id for i in items])

    poller = TopicPoller(peer, Topic(id="T" * 32, name="t"), on_rows, on_rows=on_rows)
    poller.watch_started_ms = 10**15
    await poller.poll_once()
    a = hist.add(2, 4_000, "a")
    hist.rows.append({**hist.rows[-1], "id": "v2row", "createdAt": 4_001, "bodyVersion": 2})
    hist.add(1, 4_002, "z")
    for _ in range(2):
        with pytest.raises(KeyWait):
            await poller.poll_once()
    assert calls == [a]  # the rows before the v2 one, once; nothing after it


async def _waiting(topic, refresh=False):
    return types.SimpleNamespace(state="missing", detail="not sealed for us yet")
