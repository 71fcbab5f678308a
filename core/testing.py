"""Test helpers for claudemesh-gateway and for third-party gateway plugins.

Opt in from a plugin repository with ``pytest_plugins = ["claudemesh_gateway.testing"]``
(importable fixtures, not a ``pytest11`` autoload, so nothing runs in unrelated pytest
sessions). It provides:

- :class:`RecordingContext`: a ``GatewayContext`` that records what a gateway hands the core
  (unit level: one gateway against a fake vendor server, no core).
- fixtures ``dev_broker`` (a started loopback dev broker on port 0 with a temporary state dir)
  and ``gateway_app`` (a factory: the whole gateway app from a config dict + the dev broker's
  mesh tables, served on 127.0.0.1 port 0; yields ``(client, runtime)``).
- :func:`mesh_member` and the fixture ``mesh_member_factory``: a real mesh member (a started,
  connected ``MeshPeer``) on a dev broker, to post into and read from the mesh a test app uses.
- :class:`GatewayContract`: a base test class each gateway plugin's tests subclass.

The fixtures need ``pytest`` and ``pytest-asyncio`` (``asyncio_mode = "auto"``), as this
project's own tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from .errors import DeliveryError
from .events import Event, GatewayState
from .gateway import Binding, RateLimit, SubmitResult
from .messages import Message

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient

    from .gateway import Gateway
    from .messages import Outbound
    from .runtime import Runtime

__all__ = [
    "GatewayContract",
    "RecordingContext",
    "build_test_app",
    "build_test_app_from_file",
    "dev_broker",
    "dev_mesh_tables",
    "gateway_app",
    "mesh_member",
    "mesh_member_factory",
    "wait_until",
    "webhook_client",
]

try:  # the fixtures are defined only where pytest is installed (it is not a runtime dependency)
    import pytest
except ImportError:  # pragma: no cover - production installs
    pytest = None  # type: ignore[assignment]


async def wait_until(
    pred: Callable[[], Any], limit_s: float = 15.0, what: str = "condition", *, interval: float = 0.02
) -> None:
    """Poll ``pred`` until it is truthy; fail the test with ``what`` after ``limit_s`` seconds.

    For state that lives in other tasks (the delivery engine, a fake vendor server), where
    there is no event to await."""
    try:
        async with asyncio.timeout(limit_s):
            while not pred():  # noqa: ASYNC110 - the state lives in other tasks
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit_s}s waiting for {what}") from None


class RecordingMeshHandle:
    """A ``MeshHandle`` for unit tests: records ``posts`` and ``dms``; ``await deliver(topic, msg)``
    plays an inbound topic row to whoever called ``watch_topic``. ``fail_send`` makes sends raise."""

    def __init__(self, name: str, mesh_id: str = "mesh-id-for-tests") -> None:
        self.name = name
        self._mesh_id = mesh_id
        self.state_value = "connected"
        self.watched: dict[str, Callable[[Message], Awaitable[None]]] = {}
        self.posts: list[tuple[str, str, str | None]] = []  # (topic, text, reply_to)
        self.idempotency_keys: list[str | None] = []
        self.dms: list[tuple[str, str]] = []  # (peer, text)
        self.peer_list: list[dict[str, Any]] = []
        self.fail_send: Exception | None = None
        self.rate_limit = RateLimit(scope=f"mesh:{name}:member", per_second=1.0, burst=10)  # the defaults

    @property
    def state(self) -> str:
        return self.state_value

    @property
    def mesh_id(self) -> str:
        return self._mesh_id

    async def watch_topic(self, topic: str, on_message: Callable[[Message], Awaitable[None]]) -> None:
        self.watched[topic] = on_message

    async def deliver(self, topic: str, message: Message) -> None:
        await self.watched[topic](message)

    async def post_topic(self, topic: str, text: str, *, reply_to: str | None = None,
                         idempotency_key: str | None = None) -> str | None:
        if self.fail_send is not None:
            raise self.fail_send
        self.idempotency_keys.append(idempotency_key)
        self.posts.append((topic, text, reply_to))
        return f"{self.name}-post-{len(self.posts)}"

    async def send_dm(self, peer: str, text: str) -> str:
        if self.fail_send is not None:
            raise self.fail_send
        self.dms.append((peer, text))
        return f"{self.name}-dm-{len(self.dms)}"

    async def peers(self) -> list[dict[str, Any]]:
        return list(self.peer_list)


class RecordingContext:
    """A ``GatewayContext`` that records what a gateway hands to the core.

    ``submitted`` holds accepted messages; ids already seen return ``duplicate``,
    as the real inbox ledger does. ``attempts`` holds the id of *every* ``submit``
    call, duplicates included (a gateway must give a redelivered update the same
    id). ``kv`` is in memory. Use it to test a gateway in isolation against a fake
    vendor server. ``public_url`` stands for ``[server] public_url`` (default None; set it
    as an argument or attribute).
    """

    def __init__(self, name: str, http: aiohttp.ClientSession, bindings: Sequence[Binding] = (), *,
                 public_url: str | None = None) -> None:
        self.name = name
        self.http = http
        self.public_url = public_url
        self._bindings = list(bindings)
        self.submitted: list[Message] = []
        self.attempts: list[str] = []
        self.events: list[Event] = []
        self.states: list[tuple[GatewayState, str]] = []
        self.kv: dict[str, Any] = {}
        self.secrets: list[str] = []
        self.origin_map: dict[tuple[str, str], str] = {}
        self.fail_submit: Exception | None = None
        self.meshes: dict[str, RecordingMeshHandle] = {}
        self.exclusive_held: dict[str, bool] = {}  # ctx.exclusive(what) answers; absent: True
        self._seen: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def bindings(self) -> Sequence[Binding]:
        return self._bindings

    def set_bindings(self, bindings: Sequence[Binding]) -> None:
        self._bindings = list(bindings)

    async def submit(self, message: Message) -> SubmitResult:
        self.attempts.append(message.id)
        if self.fail_submit is not None:
            raise self.fail_submit
        if message.id in self._seen:
            return SubmitResult(status="duplicate")
        self._seen.add(message.id)
        self.submitted.append(message)
        self._changed.set()
        return SubmitResult(status="queued", destinations=1)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Message]:
        async def _wait() -> None:
            while len(self.submitted) < count:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(_wait(), timeout)
        return self.submitted

    async def kv_get(self, key: str) -> Any | None:
        return copy.deepcopy(self.kv.get(key))

    async def kv_set(self, key: str, value: Any) -> None:
        self.kv[key] = copy.deepcopy(value)

    async def exclusive(self, what: str) -> bool:
        """One process: every lease is ours (set ``exclusive_held[what] = False`` to play a standby replica)."""
        return self.exclusive_held.get(what, True)

    async def kv_delete(self, key: str) -> None:
        self.kv.pop(key, None)

    async def lookup_origin(self, native_id: str, chat: str) -> str | None:
        return self.origin_map.get((chat, native_id))

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def set_state(self, state: GatewayState, detail: str = "") -> None:
        self.states.append((state, detail))

    def register_secret(self, value: str) -> None:
        self.secrets.append(value)

    def add_mesh(self, name: str) -> RecordingMeshHandle:
        """Make ``ctx.mesh(name)`` answer (a :class:`RecordingMeshHandle`)."""
        handle = self.meshes[name] = RecordingMeshHandle(name)
        return handle

    def mesh(self, name: str) -> RecordingMeshHandle:
        try:
            return self.meshes[name]
        except KeyError:
            raise KeyError(f"no [mesh.{name}] table in the configuration (RecordingContext.add_mesh)") from None


@contextlib.asynccontextmanager
async def webhook_client(gateway: Gateway) -> AsyncIterator[TestClient]:
    """A test client for ``gateway.web_routes()`` mounted as in production: under
    ``/gateways/<name>/`` behind the core's error middleware (``WebhookAuthError`` -> 403,
    other exceptions -> 500 without details)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from .app import GATEWAY_PREFIX, error_middleware

    app = web.Application(middlewares=[error_middleware])
    sub = web.Application()
    sub.add_routes(list(gateway.web_routes()))
    app.add_subapp(f"{GATEWAY_PREFIX}/{gateway.name}/", sub)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield client


# -- the whole app, for integration tests -----------------------------------------------------------------------------
def dev_mesh_tables(state_dir: Path) -> dict[str, Any]:
    """The ``[mesh.*]`` tables a started dev broker wrote to ``<state_dir>/meshes.toml``."""
    path = Path(state_dir) / "meshes.toml"
    with path.open("rb") as fh:
        return tomllib.load(fh).get("mesh", {})


async def build_test_app(
    config: Mapping[str, Any],
    *,
    state_dir: Path,
    broker: Any | None = None,
    plugins: Sequence[tuple[str, object]] = (),
    builtins: bool = True,
) -> tuple[TestClient, Runtime]:
    """Start the full gateway app on 127.0.0.1:0 and return ``(client, runtime)``; the caller
    closes ``client`` (which runs the app's shutdown). ``config`` is the TOML content as a dict;
    ``[mesh.*]`` tables of ``broker`` are merged under it, the store goes under ``state_dir``."""
    from .app import create_app
    from .plugin_manager import make_plugin_manager
    from .settings import deep_merge, settings_from_dict

    base: dict[str, Any] = {"server": {"state_dir": str(state_dir), "shutdown_timeout": 5.0}}
    if broker is not None:
        base["mesh"] = dev_mesh_tables(broker.state_dir if hasattr(broker, "state_dir") else state_dir)
    settings = settings_from_dict(deep_merge(base, config))
    pm = make_plugin_manager(entry_points=False, builtins=builtins, disable=settings.plugins.disable,
                             plugins=plugins)
    return await _serve(create_app(settings, pm))


async def build_test_app_from_file(
    path: Path, *, plugins: Sequence[tuple[str, object]] = ()
) -> tuple[TestClient, Runtime]:
    """The full gateway app as ``claudemesh-gateway run`` builds it (minus signals) from the TOML
    file at ``path`` (so a reload and the config diff have a file to read), on 127.0.0.1:0; the
    caller closes ``client``."""
    from .app import create_app
    from .plugin_manager import make_plugin_manager
    from .settings import load_settings

    settings = load_settings(path)
    pm = make_plugin_manager(entry_points=False, builtins=True, disable=settings.plugins.disable, plugins=plugins)
    return await _serve(create_app(settings, pm))


async def _serve(app: Any) -> tuple[TestClient, Runtime]:
    from aiohttp.test_utils import TestClient, TestServer

    from .app import RUNTIME

    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    try:
        await client.start_server()
    except BaseException:
        await client.close()  # tear down the contexts that did start, as web.run_app does
        raise
    return client, app[RUNTIME]


async def mesh_member(
    broker: Any | None,
    name: str,
    *,
    on_message: Callable[[Any], Any] | None = None,
    groups: Sequence[str] = (),
    mesh: Mapping[str, Any] | Any | None = None,
    options: Mapping[str, Any] | None = None,
    connect_within: float = 10.0,
) -> Any:
    """A real mesh member: a started ``MeshPeer`` connected within ``connect_within`` seconds, its state
    in a ``MemoryKV``, with the ``cli`` identity (not the gateway's). The caller stops it (or use
    the ``mesh_member_factory`` fixture, which does).

    ``broker``: a started dev broker; ``name`` picks one of the ``[mesh.*]`` tables it wrote
    (``dev``, ``dev_alice``, ``dev_bob``) and names the peer. ``mesh``: an explicit ``[mesh.*]``
    table (dict or ``MeshConfig``) instead (``broker`` may then be None). ``options``: extra table
    keys (e.g. faster poll timers; tables such as ``rest`` merge into the table's own); ``groups``: the
    member's groups. ``on_message`` receives every
    inbound row (DMs, and topics the member watches with ``await peer.watch_topic(name)``).
    """
    from .mesh import MeshPeer
    from .mesh.config import MeshConfig
    from .mesh.state import MemoryKV
    from .settings import deep_merge

    if mesh is None:
        if broker is None:
            raise ValueError("mesh_member: give a dev broker or an explicit mesh table")
        mesh = dev_mesh_tables(broker.state_dir)[name]
    if isinstance(mesh, MeshConfig) and not options and not groups:
        cfg = mesh
    else:
        table = mesh.model_dump() if isinstance(mesh, MeshConfig) else dict(mesh)
        table = deep_merge(table, options or {})
        cfg = MeshConfig.model_validate({**table, **({"groups": list(groups)} if groups else {})})
    peer = MeshPeer(name, cfg, kv=MemoryKV(), on_message=on_message, identity="cli")
    await peer.start()
    try:
        await peer.wait_connected(connect_within)
    except BaseException:
        await peer.stop()
        raise
    return peer


if pytest is not None:

    @pytest.fixture
    async def mesh_member_factory() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """Factory with :func:`mesh_member`'s arguments: ``alice = await mesh_member_factory(dev_broker,
        "dev_alice", on_message=got.append)``. Every member made is stopped at teardown."""
        peers: list[Any] = []

        async def make(broker: Any | None, name: str, **kw: Any) -> Any:
            peer = await mesh_member(broker, name, **kw)
            peers.append(peer)
            return peer

        try:
            yield make
        finally:
            for peer in reversed(peers):
                with contextlib.suppress(Exception):
                    await peer.stop()

    @pytest.fixture
    async def dev_broker(tmp_path: Path) -> AsyncIterator[Any]:
        """A started dev broker on 127.0.0.1, an ephemeral port and a temporary state dir."""
        from .devbroker import DevBroker

        state = tmp_path / "devbroker"
        state.mkdir()
        broker = DevBroker(state, host="127.0.0.1", port=0)
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()

    @pytest.fixture
    async def gateway_app(
        tmp_path: Path, dev_broker: Any
    ) -> AsyncIterator[Callable[..., Awaitable[tuple[TestClient, Runtime]]]]:
        """Factory: ``client, runtime = await gateway_app({...config...}, plugins=[(name, obj)])``.

        The config dict is a TOML document as a dict (``gateways``, ``routes``...); the dev
        broker's ``[mesh.dev*]`` tables are merged in. Every app started is stopped at teardown.
        """
        clients: list[TestClient] = []

        async def make(config: Mapping[str, Any] | None = None, **kw: Any) -> tuple[TestClient, Runtime]:
            state = tmp_path / f"gw{len(clients)}"
            state.mkdir()
            client, runtime = await build_test_app(config or {}, state_dir=state, broker=dev_broker, **kw)
            clients.append(client)
            return client, runtime

        try:
            yield make
        finally:
            for client in reversed(clients):
                await client.close()


# -- the gateway contract ---------------------------------------------------------------------------------------------
class GatewayContract:
    """Behaviour every gateway plugin must have. Subclass it in your plugin's tests::

        class TestMyGateway(GatewayContract):
            @pytest.fixture
            async def contract_gateway(self, fake_vendor):      # fake vendor server on 127.0.0.1:0
                async with aiohttp.ClientSession() as http:
                    ctx = RecordingContext("mine", http, bindings=[...])
                    yield MyGateway("mine", MyGateway.Config(api_base=str(fake_vendor.make_url(""))), ctx)

            @pytest.fixture
            def contract_inbound(self, ...):                   # see below
                ...

            @pytest.fixture
            def contract_outbound(self): return Outbound(...)

            @pytest.fixture
            def contract_break_vendor(self, fake_vendor): ...

    Fixtures to provide:

    ``contract_gateway``
        A constructed, *not started* gateway whose ``ctx`` is a :class:`RecordingContext`.
    ``contract_inbound``
        ``async (gateway, update_id: str, *, signed: bool = True) -> int | None``: make the
        platform deliver one inbound message with platform update id ``update_id`` (POST to
        the gateway's webhook with an aiohttp test client and return the HTTP status, or
        queue it on the fake vendor's polling endpoint and return None). ``signed=False``
        sends a bad signature; return None when the gateway has no signed ingress.
    ``contract_outbound``
        An :class:`Outbound` the gateway can send to the fake vendor.
    ``contract_break_vendor``
        ``(permanent: bool) -> None``: make the fake vendor fail every following send, with
        a permanent (e.g. 400 chat not found) or transient (e.g. 500 / 429) error.

    The tests run at unit level against :class:`RecordingContext`; the delivery engine's
    side (DeliveryError -> retry or dead letter + DeliveryFailed) is covered by the core.
    """

    settle_s: float = 0.2  # how long to let background ingress run before asserting "nothing happened"

    @staticmethod
    def _ctx(gateway: Gateway) -> RecordingContext:
        ctx = gateway.ctx
        assert isinstance(ctx, RecordingContext), "contract_gateway must be built with a RecordingContext"
        return ctx

    async def test_contract_start_stop_idempotent(self, contract_gateway: Gateway) -> None:
        await contract_gateway.start()
        await contract_gateway.start()
        await contract_gateway.stop()
        await contract_gateway.stop()
        assert contract_gateway.state != GatewayState.CONNECTED

    async def test_contract_bad_signature_rejected(self, contract_gateway: Gateway, contract_inbound: Any) -> None:
        ctx = self._ctx(contract_gateway)
        await contract_gateway.start()
        try:
            status = await contract_inbound(contract_gateway, "contract-bad-sig", signed=False)
            if status is None:
                pytest.skip("this gateway has no signed ingress")
            assert status in (401, 403), f"a bad signature must answer 401/403, got {status}"
            await asyncio.sleep(self.settle_s)
            assert ctx.attempts == [], "nothing may be submitted for a request with a bad signature"
        finally:
            await contract_gateway.stop()

    async def test_contract_duplicate_processed_once(self, contract_gateway: Gateway, contract_inbound: Any) -> None:
        ctx = self._ctx(contract_gateway)
        await contract_gateway.start()
        try:
            await contract_inbound(contract_gateway, "contract-dup-1")
            await ctx.wait_for(1)
            await contract_inbound(contract_gateway, "contract-dup-1")
            await asyncio.sleep(self.settle_s)
        finally:
            await contract_gateway.stop()
        assert len(ctx.submitted) == 1
        # a redelivered update either never reaches submit, or reaches it with the SAME id
        assert set(ctx.attempts) == {ctx.submitted[0].id}, f"message ids must be stable: {ctx.attempts}"

    @pytest.mark.parametrize("permanent", [True, False], ids=["permanent", "transient"]) if pytest else (lambda f: f)
    async def test_contract_send_failure_is_delivery_error(
        self, contract_gateway: Gateway, contract_outbound: Outbound, contract_break_vendor: Any, permanent: bool
    ) -> None:
        ctx = self._ctx(contract_gateway)
        await contract_gateway.start()
        try:
            contract_break_vendor(permanent)
            with pytest.raises(DeliveryError) as info:
                await contract_gateway.send(contract_outbound)
        finally:
            await contract_gateway.stop()
        assert info.value.permanent is permanent
        text = str(info.value)
        for secret in ctx.secrets + _config_secrets(contract_gateway):
            assert secret not in text, "a DeliveryError message must not contain a secret"

    async def test_contract_stop_drains(self, contract_gateway: Gateway, contract_inbound: Any) -> None:
        ctx = self._ctx(contract_gateway)
        await contract_gateway.start()
        status = await contract_inbound(contract_gateway, "contract-drain-1")
        if status is not None:
            assert status < 300, f"a valid update must be accepted, got {status}"
            # acknowledged => already submitted (the vendor is acked only after submit returns)
            assert ctx.attempts, "the gateway acknowledged the vendor before ctx.submit returned"
        else:
            await ctx.wait_for(1)
        await contract_gateway.stop()
        after_stop = list(ctx.attempts)
        await asyncio.sleep(self.settle_s)
        assert ctx.attempts == after_stop, "the gateway kept submitting after stop() returned"
        assert len(ctx.submitted) == 1


def _config_secrets(gateway: Gateway) -> list[str]:
    from .settings import iter_secrets

    with contextlib.suppress(Exception):
        return [s for s in iter_secrets(gateway.config) if len(s) >= 4]
    return []
