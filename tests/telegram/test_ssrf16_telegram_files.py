"""Issue 16, SSRF and credential leaks, Telegram: a file is downloaded only from the Bot API host or the
configured api_base origin, its getFile path cannot leave ``/file/bot<token>/``, a redirect elsewhere is
not followed (the URL holds the token), and no private or loopback address is reached unless the test
setting allows loopback. DNS answers are played by replacing ``files.resolve_addresses``."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from claudemesh_gateway import Attachment, DeliveryError, files
from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway
from claudemesh_gateway.testing import RecordingContext


@pytest.fixture
def dns(monkeypatch):
    answers: dict[str, list[str]] = {}

    async def resolve(host: str, port: int) -> list[str]:
        assert host in answers, f"unexpected DNS lookup of {host}"
        return answers[host]

    monkeypatch.setattr(files, "resolve_addresses", resolve)
    return answers


@pytest.fixture
async def foreign(aiohttp_server):
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=b"stolen")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/"), seen


def _gateway(api_base: str, token: str, http: Any) -> TelegramGateway:
    cfg = TelegramGateway.Config.model_validate({"token": token, "api_base": api_base, "poll_timeout": 1})
    return TelegramGateway("tg", cfg, RecordingContext("tg", http, []))


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "documents/../../x", "a?x=1", "a#b",
                                  "a\\..\\b", "docs//x", "a/./b", "%2e%2e/x", "a\nb"])
async def test_ssrf16_telegram_file_path_cannot_leave_the_file_prefix(make_gateway, fake_tg, path):
    gw, _ = make_gateway()
    fid = fake_tg.add_file(b"data", path)
    with pytest.raises(DeliveryError, match="unusable file path") as info:
        await gw.fetch_attachment(Attachment(name="x", url=f"tgfile:tg:{fid}"))
    assert info.value.permanent and fake_tg.token not in str(info.value)


async def test_ssrf16_telegram_redirect_to_another_host_is_not_followed(tg_fake_module, tg_token, aiohttp_server,
                                                                        http, foreign):
    base, seen = foreign

    class Redirecting(tg_fake_module.FakeBotAPI):
        async def _file(self, request: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": f"{base}/collect{request.path}"})

    fake = Redirecting(tg_token)
    fake.url = str((await aiohttp_server(fake.app)).make_url("")).rstrip("/")
    gw = _gateway(fake.url, tg_token, http)
    fid = fake.add_file(b"data", "documents/a.bin")
    with pytest.raises(DeliveryError, match="not the vendor's") as info:
        await gw.fetch_attachment(Attachment(name="a", url=f"tgfile:tg:{fid}"))
    assert info.value.permanent and tg_token not in str(info.value)
    assert seen == []                               # the token in the path never reached it


async def test_ssrf16_telegram_loopback_needs_the_test_setting(make_gateway, fake_tg, monkeypatch):
    gw, _ = make_gateway()
    fid = fake_tg.add_file(b"data", "documents/a.bin")
    monkeypatch.delenv(files.LOOPBACK_ENV, raising=False)
    with pytest.raises(DeliveryError, match="loopback"):
        await gw.fetch_attachment(Attachment(name="a", url=f"tgfile:tg:{fid}"))
    monkeypatch.setenv(files.LOOPBACK_ENV, "1")
    assert await gw.fetch_attachment(Attachment(name="a", url=f"tgfile:tg:{fid}")) == b"data"


@pytest.mark.parametrize(("answer", "match"), [("93.184.216.34", "plain http"), ("10.0.0.7", "private"),
                                               ("169.254.169.254", "private")])
async def test_ssrf16_telegram_api_base_must_be_https_and_public(tg_fake_module, tg_token, aiohttp_server, http,
                                                                 dns, answer, match):
    """api_base on a name (getFile reaches the fake through the client's own resolver on this machine); the
    download checks what the name resolves to: plain http to a public address, or any private one, refused."""
    fake = tg_fake_module.FakeBotAPI(tg_token)
    server = await aiohttp_server(fake.app)
    base = f"http://localhost:{server.port}"
    dns["localhost"] = [answer]
    gw = _gateway(base, tg_token, http)
    fid = fake.add_file(b"data", "documents/a.bin")
    with pytest.raises(DeliveryError, match=match) as info:
        await gw.fetch_attachment(Attachment(name="a", url=f"tgfile:tg:{fid}"))
    assert info.value.permanent and tg_token not in str(info.value)
