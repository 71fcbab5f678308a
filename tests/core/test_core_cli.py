"""The command line: exit codes and their one-line messages."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import socket
from pathlib import Path
from typing import Any, ClassVar

import pytest
from claudemesh_gateway import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("claudemesh-gateway:")]


def test_config_error_exit_2_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("bogus = 1\n[server]\nport = 'x'\n[gateways.webhook]\nsecret = 'CHANGE_ME-CHANGE_ME'\n")
    code, _, lines = run_cli(capsys, "-c", str(cfg), "check")
    assert code == 2
    assert sorted(lines) == sorted([
        "claudemesh-gateway: config error: bogus: unknown key",
        ("claudemesh-gateway: config error: server.port: Input should be a valid integer, unable to parse string "
         "as an integer"),
        "claudemesh-gateway: config error: gateways.webhook.secret: placeholder value CHANGE_ME must be replaced",
    ])
    cfg.write_text("[gateways.webhook]\nsecret = 'CHANGE_ME-CHANGE_ME'\n[gateways.x]\ntype = 'nope'\n")
    code, _, lines = run_cli(capsys, "-c", str(cfg), "check")
    assert (code, lines) == (2, [("claudemesh-gateway: config error: gateways.webhook.secret: placeholder value "
                                  "CHANGE_ME must be replaced")])
    cfg.write_text("[gateways.x]\ntype = 'nope'\n")
    code, _, lines = run_cli(capsys, "-c", str(cfg), "check")
    assert code == 2 and len(lines) == 1 and "gateways.x.type: unknown gateway kind 'nope'" in lines[0]


def test_missing_config_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, lines = run_cli(capsys, "-c", str(tmp_path / "nope.toml"), "check")
    assert code == 2 and lines[0].startswith("claudemesh-gateway: config error: config: file not found")


def test_plugin_error_exit_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class EP:
        group, name = "claudemesh_gateway", "telegram"

        def load(self) -> object:
            return object()

    class Dist:
        metadata: ClassVar[dict[str, str]] = {"Name": "claudemesh-gateway-impostor"}
        version = "9"
        entry_points = (EP(),)

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter([Dist()]))
    monkeypatch.chdir(Path(__file__).parent)  # no ./config.toml here: plugins works without one
    code, _, lines = run_cli(capsys, "plugins")
    assert code == 3 and lines == [
        ("claudemesh-gateway: plugin error: plugin name 'telegram' is already taken (built-in plugins reserve "
         "their names)")]


def test_startup_error_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"include = ['var/devbroker/meshes.toml']\n[server]\nport = 0\n"
                       f"[dev_broker]\nembedded = true\nport = {port}\n")
        code, _, lines = run_cli(capsys, "-c", str(cfg), "run")
    finally:
        busy.close()
    assert code == 4 and len(lines) == 1
    assert lines[0].startswith(f"claudemesh-gateway: startup error: embedded dev broker could not listen on "
                               f"127.0.0.1:{port}")


def test_unexpected_error_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: object) -> int:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "cmd_plugins", boom)
    code, _, lines = run_cli(capsys, "plugins")
    assert code == 1 and lines == [
        "claudemesh-gateway: unexpected error: ZeroDivisionError: oops (re-run with --traceback for details)"]
    code = cli.main(["--traceback", "plugins"])
    assert code == 1 and "Traceback" in capsys.readouterr().err


def test_plugins_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    webhook = next(p for p in json.loads(out) if p["name"] == "webhook")
    assert webhook["builtin"] and webhook["gateway_kinds"] == ["webhook"] and "register_gateways" in webhook["hooks"]


@pytest.fixture
async def example(tmp_path: Path) -> Path:
    from claudemesh_gateway.devbroker import DevBroker

    shutil.copy(EXAMPLE, tmp_path / "config.toml")
    broker = DevBroker(tmp_path / "var" / "devbroker", port=0)
    await broker.start()
    await broker.stop()
    return tmp_path / "config.toml"


def test_check_routes_and_dlq_on_the_example(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, lines = run_cli(capsys, "-c", str(example), "check")
    assert (code, lines) == (0, []) and out.startswith("ok: 3 mesh(es), 1 gateway(s), 2 route(s)")
    # offline, check reports the configured mode of every bound topic (auto needs the broker)
    modes = [ln for ln in out.splitlines() if ln.startswith("encryption: ")]
    assert [ln.split(":")[1].strip() for ln in modes] == ["mesh dev #general", "mesh dev #team"]
    assert all("auto -> bodyVersion 2 if the topic has a sealed key" in ln and "check --online" in ln for ln in modes)

    code, out, _ = run_cli(capsys, "-c", str(example), "routes", "--json")
    route, team = json.loads(out)
    assert code == 0 and (route["name"], route["mesh"], route["topic"]) == ("general", "dev", "general")
    assert route["binds"] == [{"gateway": "webhook", "chat": "sink", "thread": None, "direction": "both",
                               "tags": []}]
    assert (team["name"], team["topic"], team["encryption"]) == ("team", "team", "auto")

    code, out, _ = run_cli(capsys, "-c", str(example), "dlq", "list")
    assert (code, out) == (0, "")
    code, _, lines = run_cli(capsys, "-c", str(example), "dlq", "retry")
    assert code == 2 and lines == ["claudemesh-gateway: config error: dlq: give dead-letter ids or --all"]
    code, out, _ = run_cli(capsys, "-c", str(example), "dlq", "drop", "--all")
    assert code == 0 and out.startswith("dropped 0 dead letter(s)")


def test_check_before_the_dev_broker_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(EXAMPLE, tmp_path / "config.toml")
    code = cli.main(["-c", str(tmp_path / "config.toml"), "check"])
    out, err = capsys.readouterr()
    assert code == 0 and "note: the embedded dev broker has not written its mesh tables yet" in err
    assert out.startswith("ok:")


async def test_mesh_commands_against_the_dev_broker(
    tmp_path: Path, dev_broker: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    cfg = tmp_path / "c.toml"
    meshes = Path(dev_broker.state_dir) / "meshes.toml"  # type: ignore[attr-defined]
    cfg.write_text(f"include = ['{meshes}']\n"
                   "[mesh.dev_bob]\ntopic_poll_interval = 0.1\ntopic_poll_idle_interval = 0.2\n")

    code = await asyncio.to_thread(cli.main, ["-c", str(cfg), "mesh", "peers", "dev_alice"])
    peers = json.loads(capsys.readouterr().out)
    assert code == 0 and isinstance(peers, list)

    tail = asyncio.create_task(asyncio.to_thread(
        cli.main, ["-c", str(cfg), "mesh", "tail", "dev_bob", "--topic", "general", "--count", "1", "--timeout", "10"]))
    for i in range(40):  # keep posting until the tail (which only shows new messages) has seen one
        await asyncio.sleep(0.25)
        if tail.done():
            break
        code = await asyncio.to_thread(cli.main, ["-c", str(cfg), "mesh", "send", "dev_alice", "--topic", "general",
                                                  f"hello {i}"])
        assert code == 0
    assert await tail == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tailed = [r for r in rows if "createdAt" in r]
    assert len(tailed) == 1 and tailed[0]["sender"] == "alice" and tailed[0]["text"].startswith("hello ")
    assert set(tailed[0]) >= {"id", "sender", "text", "createdAt"}

    code = await asyncio.to_thread(cli.main, ["-c", str(cfg), "mesh", "send", "dev_alice", "--to", "bob", "psst"])
    sent = json.loads(capsys.readouterr().out)
    assert code == 0 and sent["name"] == "bob" and sent["messageId"]

    code, _, lines = run_cli(capsys, "-c", str(cfg), "mesh", "peers", "nope")
    assert code == 2 and "no [mesh.nope] table" in lines[0]


async def test_keygen_and_enroll_with_a_dev_broker_invite(
    tmp_path: Path, dev_broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    import os
    import stat
    import tomllib

    from claudemesh_gateway.mesh.config import MeshConfig
    from claudemesh_gateway.mesh.peer import MeshPeer
    from claudemesh_gateway.mesh.state import MemoryKV

    code = await asyncio.to_thread(cli.main, ["keygen"])
    keys = tomllib.loads(capsys.readouterr().out)
    assert code == 0 and len(keys["secret_key"]) == 128 and keys["secret_key"].endswith(keys["pubkey"])

    token = dev_broker.mint_invite(dev_broker.default_mesh.mesh.mesh_id)
    key_file = tmp_path / "keys" / "ops.key"
    code = await asyncio.to_thread(cli.main, ["enroll", token, "--name", "ops", "--display-name", "ops-gw",
                                              "--key-file", str(key_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    table = tomllib.loads(out)["mesh"]["ops"]
    assert "secret_key" not in table and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    cfg = MeshConfig.model_validate(table)  # a complete, valid [mesh.*] table
    peer = MeshPeer("ops", cfg, kv=MemoryKV(), identity="cli")
    await peer.start()
    try:
        await peer.wait_connected(5)  # the broker accepts the enrolled identity
    finally:
        await peer.stop()

    code = await asyncio.to_thread(cli.main, ["enroll", token])  # single use: the broker refuses
    _, err = capsys.readouterr()
    assert code == 4 and "claudemesh-gateway: startup error: enroll: join refused" in err


async def test_check_online_starts_the_embedded_broker_and_resolves_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    shutil.copy(EXAMPLE, tmp_path / "config.toml")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("CLAUDEMESH_DEV_BROKER__PORT", str(port))
    code = await asyncio.to_thread(cli.main, ["-c", str(tmp_path / "config.toml"), "check", "--online"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("ok: 3 mesh(es)"), err
    # the effective mode of every bound topic, resolved against the broker, and who can read it
    modes = {ln.split(":")[1].strip(): ln for ln in out.splitlines() if ln.startswith("encryption: ")}
    assert set(modes) == {"mesh dev #general", "mesh dev #team"}
    assert "auto -> bodyVersion 1 (plaintext)" in modes["mesh dev #general"]
    assert "readable by every upstream client" in modes["mesh dev #general"]
    assert "auto -> bodyVersion 2 (sealed topic key)" in modes["mesh dev #team"]
    assert "not by the broker operator" in modes["mesh dev #team"]

    text = (tmp_path / "config.toml").read_text() + (
        '\n[[routes]]\nname = "ghost"\nmesh = "dev"\ntopic = "no-such-topic"\n'
        'binds = [{ gateway = "webhook", chat = "ghost" }]\n')
    (tmp_path / "config.toml").write_text(text)
    code = await asyncio.to_thread(cli.main, ["-c", str(tmp_path / "config.toml"), "check", "--online"])
    _, err = capsys.readouterr()
    assert code == 2 and "mesh.dev: topic 'no-such-topic' used by a route does not exist on the mesh" in err


def test_http_port_in_use_is_startup_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"[server]\nport = {port}\nstate_dir = 'var'\n")
        code, _, lines = run_cli(capsys, "-c", str(cfg), "run")
    finally:
        busy.close()
    assert code == 4 and lines[0].startswith(f"claudemesh-gateway: startup error: cannot listen on 127.0.0.1:{port}")


async def test_dlq_list_retry_drop_on_a_real_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from claudemesh_gateway.settings import load_settings
    from claudemesh_gateway.store.base import OutboxItem
    from claudemesh_gateway.store.sqlite import SqliteStore

    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nstate_dir = 'var'\n")
    store = SqliteStore(load_settings(cfg).server.store)
    await store.open()
    for n in (1, 2):
        item = OutboxItem(lane="b/room", route="ab", destination={"gateway": "b", "chat": "room", "thread": None},
                          message={"id": f"m{n}", "text": "x"})
        assert await store.accept(f"m{n}", [item])
        head = await store.head("b/room")
        await store.dead_letter(head.id, "HTTP 400 (rejected)")
    await store.close()

    code = await asyncio.to_thread(cli.main, ["-c", str(cfg), "dlq", "list"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and sorted(r["message_id"] for r in rows) == ["m1", "m2"]
    assert all(r["reason"] == "HTTP 400 (rejected)" and r["lane"] == "b/room" for r in rows)
    code = await asyncio.to_thread(cli.main, ["-c", str(cfg), "dlq", "retry", str(rows[0]["id"])])
    assert code == 0 and capsys.readouterr().out.startswith("moved 1 dead letter(s) back to the outbox")
    code = await asyncio.to_thread(cli.main, ["-c", str(cfg), "dlq", "drop", "--all"])
    assert code == 0 and capsys.readouterr().out.startswith("dropped 1 dead letter(s)")
