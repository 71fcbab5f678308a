"""Fixtures for the Telegram gateway tests: a fake Bot API server and a gateway factory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from claudemesh_gateway import Address, Binding
from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway
from claudemesh_gateway.testing import RecordingContext

_spec = importlib.util.spec_from_file_location("telegram_fake_api_for_tests", Path(__file__).with_name("telegram_fake_api.py"))
assert _spec is not None and _spec.loader is not None
fake_api = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fake_api
_spec.loader.exec_module(fake_api)

TOKEN = "123456:TEST-token_abcdefghijklmnopqrstuvwxyz0123"
SECRET = "s3cret_webhook-Token"


@pytest.fixture
def tg_token() -> str:
    return TOKEN


@pytest.fixture
def tg_fake_module():
    return fake_api


@pytest.fixture
async def fake_tg(aiohttp_server):
    fake = fake_api.FakeBotAPI(TOKEN)
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def binding(chat: str | int, thread: str | int | None = None, *, gateway: str = "tg", direction: str = "both",
            options: Any = None, route: str = "r1") -> Binding:
    opts = TelegramGateway.BindingOptions.model_validate(options or {})
    return Binding(route=route, address=Address(gateway, str(chat), None if thread is None else str(thread)),
                   direction=direction, options=opts)


@pytest.fixture
def tg_binding():
    return binding


@pytest.fixture
async def make_gateway(fake_tg, http):
    made: list[TelegramGateway] = []

    def _make(*, name: str = "tg", bindings: list[Binding] | None = None, ctx: RecordingContext | None = None,
              **config: Any) -> tuple[TelegramGateway, RecordingContext]:
        cfg = {"token": TOKEN, "api_base": fake_tg.url, "poll_timeout": 1}
        cfg.update(config)
        if ctx is None:
            ctx = RecordingContext(name, http, bindings or [])
        gw = TelegramGateway(name, TelegramGateway.Config.model_validate(cfg), ctx)
        gw.backoff_initial = 0.02
        gw.backoff_max = 0.2
        gw.conflict_backoff_max = 0.2
        made.append(gw)
        return gw, ctx

    yield _make
    for gw in made:
        await gw.stop()
