"""The bot token and webhook secret never reach a log line, an exception or a Message."""

from __future__ import annotations

import asyncio
import logging

import pytest
from claudemesh_gateway import Address, Attachment, DeliveryError, Message, Outbound

SECRET = "s3cret_webhook-Token"


async def test_token_never_logged_or_raised(make_gateway, fake_tg, tg_binding, tg_token, caplog):
    caplog.set_level(logging.DEBUG)  # PTB logs its base URL and every call's parameters at DEBUG
    gw, ctx = make_gateway(bindings=[tg_binding(1), tg_binding(-5)])
    fake_tg.add_message(1, "hi")
    fid = fake_tg.add_file(b"data", "documents/x.bin")
    await gw.start()
    await ctx.wait_for(1)
    msg = Message(id="m", origin=Address("mesh", "m:#t"), sender="a", text="x")
    errors: list[BaseException] = []
    fake_tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 3", retry_after=3)
    fake_tg.fail_next("sendMessage", 401, "Unauthorized")
    fake_tg.fail_next("sendMessage", 500, "Internal Server Error")
    for _ in range(4):
        try:
            await gw.send(Outbound(message=msg, to=Address("tg", "-5"), text="x"))
        except DeliveryError as exc:
            errors.append(exc)
    assert len(errors) == 3
    assert await gw.fetch_attachment(Attachment(name="x", url=f"tgfile:tg:{fid}")) == b"data"
    await gw.stop()
    broken, bctx = make_gateway(name="tg2", api_base="http://127.0.0.1:9")
    with pytest.raises(DeliveryError) as err:
        await broken.send(Outbound(message=msg, to=Address("tg2", "1"), text="x"))
    errors.append(err.value)
    await broken.start()
    await asyncio.sleep(0.1)
    await broken.stop()

    # the fake server's own access log (aiohttp.access) is Telegram's side of the wire: not ours
    ours = [r for r in caplog.records if r.name != "aiohttp.access"]
    text = "".join(f"{r.getMessage()} {r.exc_text or ''}\n" for r in ours)
    assert "getUpdates" in text or "sendMessage" in text  # PTB debug logging did run
    assert tg_token not in text
    for exc in errors:
        seen = []
        e: BaseException | None = exc
        while e is not None:
            seen.append(f"{e!r} {e}")
            e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        assert tg_token not in " ".join(seen)
    assert all(tg_token not in d for _, d in ctx.states + bctx.states)


async def test_webhook_secret_never_logged(make_gateway, fake_tg, caplog):
    caplog.set_level(logging.DEBUG)
    gw, ctx = make_gateway(mode="webhook", webhook_secret=SECRET, public_url="https://gw.example.org")
    await gw.start()
    await gw.wait_ready(5)
    await gw.stop()
    assert fake_tg.method_calls("setWebhook")[0]["secret_token"] == SECRET
    assert SECRET not in caplog.text
    assert SECRET in ctx.secrets  # registered with the core's redaction filter too


def test_config_errors_do_not_echo_the_token():
    from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway
    from pydantic import ValidationError
    with pytest.raises(ValidationError) as err:
        TelegramGateway.Config.model_validate({"token": "not a token at all SECRETVALUE", "mode": "webhook"})
    assert "SECRETVALUE" not in str(err.value)
    assert "SECRETVALUE" not in repr(TelegramGateway.Config.model_validate({"token": "1:SECRETVALUE"}))
