"""Found by tests/fuzz (issue 16): a getUpdates answer with an entry whose ``update_id`` is missing, not an
integer or out of range made ``int(u["update_id"])`` raise in the polling loop: "ingress failed
unexpectedly" with a traceback, a restart, the same answer again — a crash loop, and the good updates of
that answer never reached the core. Now such entries are skipped with one WARNING line and the rest flow."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway
from claudemesh_gateway.testing import RecordingContext, wait_until


@pytest.mark.parametrize("bad", [None, "12", 1.5, True, -1, 2**70, [], "missing"])
async def test_defect16_polling_skips_an_unusable_update_id(tg_fake_module, tg_token, tg_binding, aiohttp_server,
                                                            http, caplog, bad):
    class Scripted(tg_fake_module.FakeBotAPI):
        answers: list[list[Any]]

        async def m_getUpdates(self, params: dict[str, Any]) -> web.Response:
            if self.answers:
                return self._ok(self.answers[0])   # like Telegram: the same answer until confirmed
            return self._ok([])


    fake = Scripted(tg_token)
    fake.url = str((await aiohttp_server(fake.app)).make_url("")).rstrip("/")
    junk = fake.make_update(fake.make_message(-100600, "junk"))
    if bad == "missing":
        del junk["update_id"]
    else:
        junk["update_id"] = bad
    good = fake.make_update(fake.make_message(-100600, "after the junk"))
    fake.answers = [[junk, good]]
    ctx = RecordingContext("tg", http, [tg_binding(-100600)])
    gw = TelegramGateway("tg", TelegramGateway.Config.model_validate(
        {"token": tg_token, "api_base": fake.url, "poll_timeout": 1}), ctx)
    gw.backoff_initial, gw.backoff_max = 0.02, 0.2
    caplog.set_level(logging.INFO, logger="claudemesh_gateway.plugins.telegram")
    await gw.start()
    try:
        await wait_until(lambda: [m.text for m in ctx.submitted] == ["after the junk"], 10, "the good update")
        await wait_until(lambda: ctx.kv.get("offset") == good["update_id"] + 1, 10, "the offset past it")
        fake.answers = []
        assert not [r for r in caplog.records if "ingress failed unexpectedly" in r.getMessage() or r.exc_info]
        assert any("skipped 1 entries" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    finally:
        await gw.stop()
