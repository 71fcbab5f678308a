"""The example gateway against claudemesh_gateway.testing: the core's GatewayContract, and its own rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from claudemesh_gateway import Address, Message, Outbound
from claudemesh_gateway.testing import GatewayContract, RecordingContext, wait_until
from claudemesh_gateway_jsonl import JsonlConfig, JsonlGateway


def _append(path: Path, *lines: object) -> None:
    with path.open("a") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def _gateway(tmp_path: Path, http: aiohttp.ClientSession, ctx: RecordingContext | None = None) -> JsonlGateway:
    cfg = JsonlConfig(outbox=tmp_path / "out.jsonl", inbox=tmp_path / "in.jsonl", poll_interval=0.02, fsync=False)
    return JsonlGateway("files", cfg, ctx or RecordingContext("files", http))


class TestJsonlContract(GatewayContract):
    @pytest.fixture
    async def contract_gateway(self, tmp_path):
        async with aiohttp.ClientSession() as http:
            yield _gateway(tmp_path, http)

    @pytest.fixture
    def contract_inbound(self):
        async def deliver(gateway, update_id: str, *, signed: bool = True) -> int | None:
            if not signed:
                return None  # a local file has no signed ingress
            _append(gateway.config.inbox, {"id": update_id, "text": f"contract {update_id}", "sender": "ann"})
            return None

        return deliver

    @pytest.fixture
    def contract_outbound(self):
        m = Message(id="mesh:dev:1", origin=Address("mesh", "dev:#general"), sender="alice", text="hi")
        return Outbound(message=m, to=Address("files", "file"), text="alice: hi", idempotency_key="k1")

    @pytest.fixture
    def contract_break_vendor(self, contract_gateway):
        def brk(permanent: bool) -> None:
            cfg = contract_gateway.config
            if permanent:
                cfg.outbox.mkdir()  # a directory: no retry can append to it
            else:
                contract_gateway.config = cfg.model_copy(update={"outbox": cfg.outbox.parent / "gone" / "out.jsonl"})

        return brk


async def test_outbound_lines_carry_the_idempotency_key(tmp_path):
    async with aiohttp.ClientSession() as http:
        gw = _gateway(tmp_path, http)
        m = Message(id="mesh:dev:7", origin=Address("mesh", "dev:#general"), sender="alice", text="hé")
        out = Outbound(message=m, to=Address("files", "room", "t1"), text="alice: hé", reply_to="x1",
                       idempotency_key="mesh:dev:7|files/room/t1|1")
        result = await gw.send(out)
        await gw.send(out)  # a retry of the same part
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert result.native_ids == ("mesh:dev:7|files/room/t1|1",)
    assert lines[0] == {"id": "mesh:dev:7|files/room/t1|1", "message_id": "mesh:dev:7", "chat": "room",
                        "thread": "t1", "reply_to": "x1", "sender": "alice", "text": "alice: hé", "part": 1,
                        "parts": 1}
    assert lines[1]["id"] == lines[0]["id"]  # a reader dedups retries by id


async def test_bad_lines_are_skipped_and_nothing_else_is_lost(tmp_path, caplog):
    async with aiohttp.ClientSession() as http:
        ctx = RecordingContext("files", http)
        gw = _gateway(tmp_path, http, ctx)
        _append(gw.config.inbox, "not json", '["a list"]', {"id": True, "text": "x"}, {"id": "a"},
                {"id": "1", "text": "one", "chat": "ops"}, "", {"id": 2, "text": "two"})
        with (gw.config.inbox.open("a")) as f:
            f.write('{"id": "3", "text": "th')  # still being written
        await gw.start()
        try:
            await ctx.wait_for(2)
            with gw.config.inbox.open("a") as f:
                f.write('ree"}\n')
            await ctx.wait_for(3)
        finally:
            await gw.stop()
    assert [(m.id, m.origin.chat, m.text) for m in ctx.submitted] == [
        ("jsonl:files:1", "ops", "one"), ("jsonl:files:2", "file", "two"), ("jsonl:files:3", "file", "three")]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 4 and all("byte" in s for s in skipped)
    assert ctx.kv["inbox_offset"] == gw.config.inbox.stat().st_size


async def test_a_restart_resumes_after_the_last_submitted_line(tmp_path):
    async with aiohttp.ClientSession() as http:
        ctx = RecordingContext("files", http)
        ctx.fail_submit = OSError("store down")
        gw = _gateway(tmp_path, http, ctx)
        _append(gw.config.inbox, {"id": "1", "text": "one"})
        await gw.start()
        await wait_until(lambda: len(ctx.attempts) >= 2, what="submit retried")
        await gw.stop()
        assert ctx.submitted == [] and "inbox_offset" not in ctx.kv  # not durable: not skipped
        ctx.fail_submit = None
        again = _gateway(tmp_path, http, ctx)  # a restart, same kv
        _append(gw.config.inbox, {"id": "2", "text": "two"})
        await again.start()
        try:
            await ctx.wait_for(2)
        finally:
            await again.stop()
    assert [m.id for m in ctx.submitted] == ["jsonl:files:1", "jsonl:files:2"]


async def test_an_overlong_line_is_skipped_whole(tmp_path):
    async with aiohttp.ClientSession() as http:
        ctx = RecordingContext("files", http)
        cfg = JsonlConfig(outbox=tmp_path / "o", inbox=tmp_path / "i", poll_interval=0.02, max_line_bytes=256)
        gw = JsonlGateway("files", cfg, ctx)
        _append(cfg.inbox, json.dumps({"id": "big", "text": "x" * 5000}), {"id": "ok", "text": "fine"})
        await gw.start()
        try:
            await ctx.wait_for(1)
        finally:
            await gw.stop()
    assert [m.id for m in ctx.submitted] == ["jsonl:files:ok"]


def test_it_appears_in_claudemesh_gateway_plugins():
    """Installed with pip, the entry point makes it a plugin like the built-in ones."""
    cli = Path(sys.executable).with_name("claudemesh-gateway")
    proc = subprocess.run([str(cli), "plugins"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("jsonl ")), "")
    assert "claudemesh-gateway-example" in line and "kinds=jsonl" in line, proc.stdout
