"""BridgeGateway in isolation (a RecordingContext with a fake mesh handle) and its config checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from claudemesh_gateway import Address, Binding, DeliveryError, GatewayState, Message, Outbound
from claudemesh_gateway.plugins.bridge.gateway import (
    BridgeConfig,
    BridgeGateway,
    is_dm_command,
)
from claudemesh_gateway.testing import GatewayContract, RecordingContext, build_test_app
from pydantic import ValidationError

from .conftest import mesh_section, wait_until


class FakeHandle:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "connecting"
        self.mesh_id = "m" * 32
        self.watched: list[str] = []
        self.posts: list[tuple[str, str, str | None]] = []
        self.callback = None
        self.fail: Exception | None = None
        self.keys: list[str | None] = []

    async def watch_topic(self, topic, on_message):
        self.watched.append(topic)
        self.callback = on_message

    async def post_topic(self, topic, text, *, reply_to=None, idempotency_key=None):
        if self.fail is not None:
            raise self.fail
        self.keys.append(idempotency_key)
        self.posts.append((topic, text, reply_to))
        return f"row{len(self.posts)}"

    async def send_dm(self, peer, text):
        return "q1"

    async def peers(self):
        return []


class MeshContext(RecordingContext):
    def __init__(self, *a, meshes=None, **kw) -> None:
        super().__init__(*a, **kw)
        self.handles = meshes or {}

    def mesh(self, name):
        return self.handles[name]


def _bindings(*specs):
    return [Binding(route="r", address=Address("to_b", chat), direction=d) for chat, d in specs]


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


def _gateway(http, bindings=(), **cfg):
    handle = FakeHandle("b")
    ctx = MeshContext("to_b", http, bindings=list(bindings), meshes={"b": handle})
    return BridgeGateway("to_b", BridgeConfig(mesh="b", **cfg), ctx), ctx, handle


def test_bridge_config_is_strict():
    assert BridgeConfig(mesh=" b ").mesh == "b"
    assert BridgeConfig(mesh="b").allow_dm is False
    with pytest.raises(ValidationError):
        BridgeConfig(mesh="b", max_hops=3)
    with pytest.raises(ValidationError):
        BridgeConfig()
    with pytest.raises(ValidationError):
        BridgeGateway.BindingOptions(anything=1)


def test_bridge_capabilities_fit_the_mesh_byte_limit():
    caps = BridgeGateway.capabilities
    assert caps.replies and not caps.threads and not caps.edits and not caps.media
    assert caps.formatting == "plain"
    # the core splits by characters; the mesh caps UTF-8 bytes (45,000): 4-byte characters plus a
    # hop prefix added to later parts must still fit
    assert (caps.max_text + len("__cmh10:")) * 4 <= 45_000


def test_bridge_rate_limit_shares_the_core_mesh_bucket(http):
    from claudemesh_gateway.delivery.transport import mesh_rate_limit

    gw, _ctx, _h = _gateway(http)
    assert tuple(gw.rate_limits(Address("to_b", "lobby"))) == (mesh_rate_limit("b"),)
    assert gw.rate_limits(Address("to_b", "x"))[0].scope == "mesh:b:member"
    assert gw.mesh_of(Address("to_b", "lobby")) == "b"


def test_bridge_dm_command_detection():
    for text in ("/dm bob hi", "/DM bob hi", "/dm@bot bob hi", "  /dm", "tag:ops /dm bob hi", "tag:a tag:b /dm x y"):
        assert is_dm_command(text), text
    for text in ("/dmx bob", "hello /dm bob", "/peers", "dm bob", ""):
        assert not is_dm_command(text), text


async def test_bridge_watches_inbound_bindings_once_and_mirrors_state(http):
    gw, ctx, handle = _gateway(http, _bindings(("lobby", "both"), ("lobby", "in"), ("news", "out"), ("ops", "in")))
    await gw.start()
    await gw.start()  # idempotent
    try:
        assert handle.watched == ["lobby", "ops"]
        assert gw.state == GatewayState.STARTING
        handle.state = "connected"
        await wait_until(lambda: gw.state == GatewayState.CONNECTED, 3, "connected")
        handle.state = "backoff"
        await wait_until(lambda: gw.state == GatewayState.TRANSIENT_DISCONNECT, 3, "transient")
        assert "mesh b" in gw.state_detail
        handle.state = "connecting"  # after having been connected: still a disconnect
        await asyncio.sleep(0.4)
        assert gw.state == GatewayState.TRANSIENT_DISCONNECT
        handle.state = "terminal"
        await wait_until(lambda: gw.state == GatewayState.BAD_CREDENTIALS, 3, "bad credentials")
    finally:
        await gw.stop()
        await gw.stop()
    assert gw.state == GatewayState.STOPPED
    assert ctx.states[-1][0] == GatewayState.STOPPED


async def test_bridge_rows_submitted_until_stopped(http):
    gw, ctx, handle = _gateway(http, _bindings(("lobby", "both")))
    await gw.start()
    msg = Message(id="to_b:b:r1", origin=Address("to_b", "lobby"), sender="bob", text="hi", visited=("b",))
    await handle.callback(msg)
    assert [m.id for m in ctx.submitted] == ["to_b:b:r1"]
    await handle.callback(Message(id="to_b:b:r2", origin=Address("to_b", "lobby"), sender="bob", text="/dm a x"))
    assert [m.id for m in ctx.submitted] == ["to_b:b:r1"]  # allow_dm = false
    assert [getattr(e, "reason", None) for e in ctx.events] == ["dm_disabled"]
    await gw.stop()
    with pytest.raises(RuntimeError):  # the cursor must not advance past rows a stopped bridge cannot take
        await handle.callback(Message(id="to_b:b:r3", origin=Address("to_b", "lobby"), sender="bob", text="x"))
    assert len(ctx.submitted) == 1


async def test_bridge_send_posts_to_the_far_topic(http):
    gw, _ctx, handle = _gateway(http)
    msg = Message(id="mesh:a:1", origin=Address("mesh", "a:#general"), sender="alice", text="x" * 20,
                  hops=0, visited=("a",))
    # the core renders every part with the hop prefix (mesh_of); the bridge posts it as given
    r1 = await gw.send(Outbound(message=msg, to=Address("to_b", "lobby"), text="__cmh1:alice: xx (1/2)",
                                part=1, parts=2, reply_to="row-parent", idempotency_key="k1"))
    r2 = await gw.send(Outbound(message=msg, to=Address("to_b", "lobby"), text="__cmh1:xx (2/2)", part=2,
                                parts=2, idempotency_key="k2"))
    assert r1.native_ids == ("row1",) and r2.native_ids == ("row2",)
    assert handle.posts == [("lobby", "__cmh1:alice: xx (1/2)", "row-parent"), ("lobby", "__cmh1:xx (2/2)", None)]
    assert handle.keys == ["k1", "k2"]  # retries of a part reuse its client message id on the far mesh
    handle.fail = DeliveryError("mesh b: not connected")
    with pytest.raises(DeliveryError):
        await gw.send(Outbound(message=msg, to=Address("to_b", "lobby"), text="y"))


async def test_bridge_unknown_mesh_fails_start_clearly(tmp_path: Path, net):
    cfg = {
        "mesh": mesh_section(net, {"a": "a"}),
        "gateways": {"to_x": {"type": "bridge", "mesh": "nowhere"}},
        "routes": [{"name": "ax", "mesh": "a", "topic": "general", "binds": [{"gateway": "to_x", "chat": "t"}]}],
    }
    with pytest.raises(Exception) as info:
        client, _rt = await build_test_app(cfg, state_dir=tmp_path)
        await client.close()
    assert "gateways.to_x.mesh: no [mesh.nowhere] table" in str(info.value), str(info.value)


async def test_bridge_binding_options_are_refused(tmp_path: Path, net):
    cfg = {
        "mesh": mesh_section(net, {"a": "a", "b": "b"}),
        "gateways": {"to_b": {"type": "bridge", "mesh": "b"}},
        "routes": [{"name": "ab", "mesh": "a", "topic": "general",
                    "binds": [{"gateway": "to_b", "chat": "lobby", "options": {"thread": "x"}}]}],
    }
    with pytest.raises(Exception) as info:
        client, _rt = await build_test_app(cfg, state_dir=tmp_path)
        await client.close()
    assert "thread" in str(info.value)


class TestBridgeContract(GatewayContract):
    """The contract every gateway plugin honours, with the far mesh faked by FakeHandle."""

    @pytest.fixture
    async def contract_gateway(self, http):
        gw, _ctx, _handle = _gateway(http, _bindings(("lobby", "both")))
        return gw

    @pytest.fixture
    def contract_inbound(self):
        async def deliver(gateway, update_id, *, signed=True):
            if not signed:
                return  # rows come from the mesh peer (signed by the broker), no webhook
            handle = gateway.ctx.handles["b"]
            # the core's handle delivers a row again (same id) when the cursor did not advance
            await handle.callback(Message(id=f"to_b:b:{update_id}", origin=Address("to_b", "lobby"),
                                          sender="bob", text="hello", visited=("b",)))
            return
        return deliver

    @pytest.fixture
    def contract_outbound(self):
        msg = Message(id="mesh:a:1", origin=Address("mesh", "a:#general"), sender="alice", text="hi", visited=("a",))
        return Outbound(message=msg, to=Address("to_b", "lobby"), text="__cmh1:alice: hi")

    @pytest.fixture
    def contract_break_vendor(self, contract_gateway):
        def brk(permanent):
            contract_gateway.ctx.handles["b"].fail = DeliveryError("mesh b: refused", permanent=permanent)
        return brk


async def test_bridge_check_warnings(http):
    gw, _ctx, _h = _gateway(http)
    assert await gw.check() == ["no route binds it; mesh b carries nothing"]
    gw, _ctx, _h = _gateway(http, _bindings(("c:#x", "both"), ("b:#y", "out")))
    warnings = await gw.check()
    assert len(warnings) == 1 and "names mesh 'c'" in warnings[0]
    ctx = MeshContext("to_z", http, bindings=_bindings(("t", "in")), meshes={})
    assert await BridgeGateway("to_z", BridgeConfig(mesh="z"), ctx).check() == [
        "mesh: no [mesh.z] table; the bridge cannot start"]
