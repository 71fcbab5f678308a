"""Fixtures for the property-based fuzz tests (issue 16): every inbound parser gets hypothesis-made input.

Bounded by default (``DEFAULT_EXAMPLES`` examples per test, derandomized so a run is repeatable);
``CLAUDEMESH_FUZZ_EXAMPLES=N`` asks for a longer, randomized run, and ``-m fuzz`` selects only these
tests. The vendor fakes are the ones the plugin tests use, loaded from their files (a test module
cannot import another directory's conftest under ``--import-mode=importlib``), so there is one fake
per vendor, not a copy here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from claudemesh_gateway import Address, Binding
from claudemesh_gateway.testing import RecordingContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TESTS = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLES = 40


def _examples() -> int | None:
    raw = os.environ.get("CLAUDEMESH_FUZZ_EXAMPLES", "").strip()
    return int(raw) if raw else None


_LONG = _examples()
settings.register_profile(
    "claudemesh-fuzz",
    max_examples=_LONG or DEFAULT_EXAMPLES,
    derandomize=_LONG is None,        # the default run is the same every time; a long run explores
    deadline=None,                    # no timed assertions: loopback servers under a loaded machine
    database=None,                    # nothing written into the worktree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
FUZZ = settings.get_profile("claudemesh-fuzz")


async def fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``check`` on hypothesis-made values (with shrinking) from an async test.

    Hypothesis drives the examples from a worker thread; each ``check`` runs on the test's event loop,
    where the fixtures' servers and gateways live, so an example sees exactly what production would."""
    loop = asyncio.get_running_loop()

    @FUZZ
    @given(strategy)
    def run(value: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(value), loop).result(timeout=120)

    await asyncio.to_thread(run)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.fuzz)
            if _LONG is not None:
                item.add_marker(pytest.mark.timeout(0))  # a long run takes as long as it takes


def load(rel: str, name: str) -> ModuleType:
    """A helper module of another test directory (its fake vendor, its hostile broker)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tg_fake = load("telegram/telegram_fake_api.py", "fuzz_telegram_fake_api")
slack_fakes = load("slack/conftest.py", "fuzz_slack_fakes")
wa_fakes = load("whatsapp/conftest.py", "fuzz_whatsapp_fakes")
hostile_broker = load("mesh/test_hostile_broker.py", "fuzz_hostile_broker")

# the hostile broker's fixture, as it is (it needs only aiohttp_server)
hostile = hostile_broker.hostile


# -- strategies shared by the tests ----------------------------------------------------------------------
#: any JSON value, bounded in size and depth (for absurd nesting see ``deep_json``)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
#: JSON nested past Python's recursion limit (a RecursionError in json.loads): behind a valid signature it
#: was a 500 with a traceback until issue 17 item 7; every HTTP fuzz test sends such bodies too
deep_json = st.tuples(st.integers(1100, 5000), st.sampled_from(["[", '{"a":'])).map(
    lambda t: (t[1] * t[0] + "1" + ("]" if t[1] == "[" else "}") * t[0]).encode())


def with_deep_json(bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return bodies | deep_json


#: text with the characters that break parsers: controls, NUL, surrogates' neighbours, RTL, emoji
nasty_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["", " ", "\x00", "\n\r", "%00", "../../etc/passwd", "{{text}}", "{0}", "%s%s%n", "\u202e", "💥" * 20,
     "a" * 5000, "<script>", "null", "true", "1e999", "NaN", "-0", "0x10", "１２３"])


def mutate(base: dict[str, Any], draw: Any, *, keys: list[str] | None = None) -> dict[str, Any]:
    """``base`` with some keys replaced by arbitrary JSON values, some removed, some added."""
    out = json.loads(json.dumps(base))
    for key in draw(st.lists(st.sampled_from(keys or sorted(out)), max_size=4, unique=True)):
        action = draw(st.sampled_from(["value", "text", "drop"]))
        if action == "drop":
            out.pop(key, None)
        else:
            out[key] = draw(json_values if action == "value" else nasty_text)
    for key, value in draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2)).items():
        out.setdefault(key, value)
    return out


# -- per-vendor fixtures --------------------------------------------------------------------------------
@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def mounted(aiohttp_client, name: str, routes) -> Any:
    app = web.Application()
    sub = web.Application()
    sub.add_routes(routes)
    app.add_subapp(f"/gateways/{name}/", sub)
    return await aiohttp_client(app)


@pytest.fixture
async def fake_tg(aiohttp_server):
    fake = tg_fake.FakeBotAPI()
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def fake_slack(aiohttp_server):
    fake = slack_fakes.FakeSlack()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


def slack_binding(chat: str = "C1") -> Binding:
    return slack_fakes.binding(chat)


@pytest.fixture
async def slack_gateway(fake_slack, http):
    from claudemesh_gateway.plugins.slack.gateway import SlackGateway

    made: list[Any] = []

    async def make(mode: str) -> Any:
        conf: dict[str, Any] = {"bot_token": slack_fakes.BOT_TOKEN, "api_base": f"{fake_slack.url}/api/",
                                "mode": mode, "ping_interval": 1.0}
        if mode == "socket":
            conf["app_token"] = slack_fakes.APP_TOKEN
        else:
            conf["signing_secret"] = slack_fakes.SIGNING_SECRET
        ctx = RecordingContext("slack", http, [slack_binding("C1")])
        gw = SlackGateway("slack", SlackGateway.Config.model_validate(conf), ctx)
        made.append(gw)
        await gw.start()
        return gw

    yield make
    for gw in made:
        await gw.stop()


@pytest.fixture
async def tg_webhook(fake_tg, http, aiohttp_client):
    from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway

    binding = Binding(route="r1", address=Address("tg", "-100600"), direction="both",
                      options=TelegramGateway.BindingOptions.model_validate({}))
    ctx = RecordingContext("tg", http, [binding])
    cfg = {"token": fake_tg.token, "api_base": fake_tg.url, "poll_timeout": 1, "mode": "webhook",
           "webhook_secret": "s3cret_webhook-Token", "public_url": "https://gw.example.org/"}
    gw = TelegramGateway("tg", TelegramGateway.Config.model_validate(cfg), ctx)
    await gw.start()
    client = await mounted(aiohttp_client, "tg", gw.web_routes())
    yield gw, ctx, client
    await gw.stop()


@pytest.fixture
async def tg_polling(http, aiohttp_server, caplog):
    """A polling Telegram gateway whose getUpdates answers come from ``fake.script`` (one list per call,
    then empty answers): the raw JSON a Bot API server could send, odd ids and junk entries included.
    ``gw.restarts`` counts "ingress failed unexpectedly" restarts of the polling task."""
    from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway

    class ScriptedBotAPI(tg_fake.FakeBotAPI):
        def __init__(self) -> None:
            super().__init__()
            self.script: list[list[Any]] = []
            self.errors: list[str] = []
            self.offsets: list[Any] = []

        async def m_getUpdates(self, params: dict[str, Any]) -> web.Response:
            self.offsets.append(params.get("offset"))
            if self.script:
                return self._ok(self.script.pop(0))
            await asyncio.sleep(0.05)
            return self._ok([])

    fake = ScriptedBotAPI()
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")
    binding = Binding(route="r1", address=Address("tg", "-100600"), direction="both",
                      options=TelegramGateway.BindingOptions.model_validate({}))
    ctx = RecordingContext("tg", http, [binding])
    cfg = {"token": fake.token, "api_base": fake.url, "poll_timeout": 1}
    gw = TelegramGateway("tg", TelegramGateway.Config.model_validate(cfg), ctx)
    gw.backoff_initial = 0.02
    gw.backoff_max = 0.2

    class Restarts(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ingress failed unexpectedly" in record.getMessage():
                gw.restarts += 1
                fake.errors.append(record.getMessage())

    gw.restarts = 0
    handler = Restarts()
    logging.getLogger("claudemesh_gateway.plugins.telegram").addHandler(handler)
    await gw.start()
    await gw.wait_ready(10)
    yield gw, ctx, fake
    logging.getLogger("claudemesh_gateway.plugins.telegram").removeHandler(handler)
    await gw.stop()


@pytest.fixture
async def wa(aiohttp_client):
    twilio = wa_fakes.FakeTwilio()
    await twilio.server.start_server()
    session = aiohttp.ClientSession()
    ctx = RecordingContext(wa_fakes.NAME, session, [wa_fakes.binding()])
    base = wa_fakes.WhatsAppGateway
    cls = type("FuzzWhatsAppGateway", (base,), {"http_client_class": wa_fakes.fake_http_class(twilio.url)})
    gw = cls(wa_fakes.NAME, base.Config.model_validate(wa_fakes.default_config()), ctx)
    await gw.start()
    client = await mounted(aiohttp_client, wa_fakes.NAME, gw.web_routes())
    yield wa_fakes.WA(gateway=gw, ctx=ctx, twilio=twilio, client=client)
    await gw.stop()
    await twilio.server.close()
    await session.close()
