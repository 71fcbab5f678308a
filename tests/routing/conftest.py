"""Fakes for routing tests: a recording gateway, a fake mesh peer, a small runtime on a real SqliteStore."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from claudemesh_gateway import (
    Address,
    BindingOptions,
    Capabilities,
    DeliveryError,
    Gateway,
    Message,
    Outbound,
    RateLimit,
    SendResult,
)
from claudemesh_gateway.plugin_manager import make_plugin_manager
from claudemesh_gateway.routing.pipeline import Pipeline
from claudemesh_gateway.routing.table import RouteTable
from claudemesh_gateway.store.sqlite import SqliteStore

ALICE = "a1" * 32
BOB = "b2" * 32
CAROL = "c3" * 32
GATEWAY_PK = "9f" * 32


class FakeOptions(BindingOptions):
    flavour: str = "plain"
    allow_mass_mentions: bool = False


class FakeGateway(Gateway):
    kind: ClassVar[str] = "fake"
    BindingOptions: ClassVar[type[BindingOptions]] = FakeOptions
    capabilities: ClassVar[Capabilities] = Capabilities(max_text=400, max_parts=8, replies=True, edits=True)

    def __init__(self, name: str, config: Any = None, ctx: Any = None) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.sent: list[Outbound] = []
        self.fail: DeliveryError | None = None
        self._ids = itertools.count(100)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def send(self, out: Outbound) -> SendResult:
        if self.fail is not None:
            raise self.fail
        self.sent.append(out)
        return SendResult(native_ids=(str(next(self._ids)),))

    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        return (RateLimit(scope=f"fake:{self.name}:{to.chat}", per_second=5, burst=5),)


class SendOnlyGateway(FakeGateway):
    kind: ClassVar[str] = "sendonly"
    supports_inbound: ClassVar[bool] = False


class StrictOptions(BindingOptions):
    flavour: str = "plain"


class StrictGateway(FakeGateway):
    """Its BindingOptions has no mass-mention switch: the core must not add unknown keys."""

    kind: ClassVar[str] = "strict"
    BindingOptions: ClassVar[type[BindingOptions]] = StrictOptions

    async def send(self, out: Outbound) -> SendResult:
        StrictOptions.model_validate(dict(out.options))  # raises on unknown keys, like a strict plugin
        return await super().send(out)


class HtmlGateway(FakeGateway):
    """Escapes like Telegram HTML: '<' grows to '&lt;' (tests the re-split after rendering)."""

    kind: ClassVar[str] = "html"
    capabilities: ClassVar[Capabilities] = Capabilities(max_text=100, max_parts=20, formatting="html")

    def render_text(self, message: Message, text: str, out_options: Any) -> str | None:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class FakePeer:
    """Implements the MeshPeer surface the routing layer uses."""

    def __init__(self, name: str, roster: Sequence[Any] = ()) -> None:
        self.name = name
        self.pubkey = GATEWAY_PK
        self.member_id = "member-gw"
        self.posts: list[dict[str, Any]] = []
        self.dms: list[dict[str, Any]] = []
        self.roster = list(roster)
        self._ids = itertools.count(1)

    async def post_topic(self, topic_name: str, text: str, *, reply_to_id: str | None = None,
                         mentions: Sequence[str] = (), client_message_id: str | None = None) -> str:
        mid = f"tm{next(self._ids)}"
        self.posts.append({"topic": topic_name, "text": text, "reply_to_id": reply_to_id,
                           "mentions": tuple(mentions), "cmid": client_message_id, "id": mid})
        return mid

    async def send_dm(self, pubkey: str, text: str, *, client_message_id: str | None = None,
                      priority: str = "next") -> str:
        qid = f"q{next(self._ids)}"
        self.dms.append({"pubkey": pubkey, "text": text, "cmid": client_message_id})
        return qid

    async def peers(self, refresh: bool = False) -> list[Any]:
        return list(self.roster)

    def peers_with_tag(self, tag: str) -> list[Any]:
        return [p for p in self.roster if tag in p.tags()]

    def resolve_peer(self, who: str) -> Any:
        for p in self.roster:
            if p.pubkey == who.lower() or p.display_name.lower() == who.lower():
                return p
        raise LookupError(f"no peer named {who!r}")


class FakeRuntime:
    def __init__(self, store: SqliteStore, gateways: dict[str, Gateway], meshes: dict[str, Any],
                 routes: list[dict[str, Any]], pm: Any) -> None:
        self.settings = SimpleNamespace(mesh={m: None for m in meshes}, routes=routes)
        self.pm = pm
        self.store = store
        self.gateways = gateways
        self.meshes = meshes
        self.routes = RouteTable.build(routes, gateways=gateways, meshes=self.settings.mesh)
        self.events: list[Any] = []
        self.kicks = 0
        self.delivery = SimpleNamespace(kick=self._kick)
        self.app = None
        self.states: dict[str, Any] = {}
        self.pipeline = Pipeline(self)

    def _kick(self, lane: str | None = None) -> None:
        self.kicks += 1

    def emit(self, event: Any) -> None:
        self.events.append(event)

    def drops(self) -> list[str]:
        return [e.reason for e in self.events if e.name == "message-dropped"]


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path / "routing.sqlite3")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def make_runtime(store):
    def make(routes: list[dict[str, Any]], *, gateways: dict[str, Gateway] | None = None,
             meshes: dict[str, Any] | None = None, plugins: Sequence[tuple[str, object]] = ()) -> FakeRuntime:
        gws = gateways if gateways is not None else {"tg": FakeGateway("tg"), "sl": FakeGateway("sl")}
        ms = meshes if meshes is not None else {"m": FakePeer("m")}
        pm = make_plugin_manager(entry_points=False, builtins=False, plugins=plugins)
        return FakeRuntime(store, gws, ms, routes, pm)

    return make


async def drain(rt: FakeRuntime) -> list[Any]:
    """Deliver every queued outbox item through the pipeline's transport (no engine, no timers)."""
    delivered = []
    for _ in range(100):
        lanes = await rt.store.ready_lanes(1e12)
        if not lanes:
            return delivered
        for lane in lanes:
            item = await rt.store.head(lane)
            outs, _limits = await rt.pipeline.render(item)
            results = [await rt.pipeline.send(o) for o in outs]
            await rt.pipeline.delivered(item, results)
            await rt.store.complete(item.id)
            delivered.append((item, outs))
    raise AssertionError("outbox did not drain")


def msg(text: str, *, gateway: str = "tg", chat: str = "c1", sender: str = "Ann", sender_id: str = "u1",
        mid: str | None = None, **kw: Any) -> Message:
    return Message(id=mid or f"{gateway}:{chat}:{abs(hash(text)) % 10**8}:{sender_id}",
                   origin=Address(gateway, chat, kw.pop("thread", None)), sender=sender, sender_id=sender_id,
                   text=text, **kw)
