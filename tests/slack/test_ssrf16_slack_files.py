"""Issue 16, SSRF and credential leaks, Slack: ``url_private`` downloads (with the bot token) go only to
slack.com / *.slack.com over https or to the configured api_base origin, follow no redirect elsewhere,
and never reach a private or loopback address unless the test setting allows loopback. DNS answers
are played by replacing ``claudemesh_gateway.files.resolve_addresses``: no lookup leaves the machine."""

from __future__ import annotations

from typing import Any

import pytest
from claudemesh_gateway import Attachment, DeliveryError, files

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def _ref(gw: Any, f: dict[str, Any]) -> Attachment:
    return Attachment(name=f["name"], content_type=f["mimetype"], url=f"slackfile:{gw.name}:{f['id']}")


@pytest.fixture
def dns(monkeypatch):
    answers: dict[str, list[str]] = {}

    async def resolve(host: str, port: int) -> list[str]:
        assert host in answers, f"unexpected DNS lookup of {host}"
        return answers[host]

    monkeypatch.setattr(files, "resolve_addresses", resolve)
    return answers


async def _refused(gw: Any, fake_slack: Any, url: str, match: str) -> None:
    f = fake_slack.add_file(PNG)
    fake_slack.files[f["id"]]["info"]["url_private_download"] = url
    before = len(fake_slack.downloads)
    with pytest.raises(DeliveryError, match=match) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert info.value.permanent and url not in str(info.value)
    assert len(fake_slack.downloads) == before


async def test_ssrf16_slack_url_private_over_plain_http_is_refused(make_gateway, fake_slack):
    gw = await make_gateway()
    await _refused(gw, fake_slack, "http://files.slack.com/files-pri/T-F1/download/a.png", "plain http")


async def test_ssrf16_slack_url_private_on_another_host_is_refused(make_gateway, fake_slack):
    gw = await make_gateway()
    for url in ("https://files.slack.com.evil.example/x", "https://files.slack.com:8443/x",
                "https://u:p@files.slack.com/x", "https://169.254.169.254/latest/meta-data/"):
        await _refused(gw, fake_slack, url, "not the vendor's|credentials")


async def test_ssrf16_slack_host_resolving_to_a_private_address_is_refused(make_gateway, fake_slack, dns):
    gw = await make_gateway()
    dns["files.slack.com"] = ["10.1.2.3"]
    await _refused(gw, fake_slack, "https://files.slack.com/files-pri/T-F1/download/a.png", "private")


async def test_ssrf16_slack_redirect_to_a_private_slack_host_is_refused(make_gateway, fake_slack, dns, sk):
    gw = await make_gateway()
    dns["files.slack.com"] = ["192.168.0.10"]
    f = fake_slack.add_file(PNG)
    fake_slack.download_status.append((302, {"Location": "https://files.slack.com/files-pri/T-F1/download/a"}))
    with pytest.raises(DeliveryError, match="private") as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert info.value.permanent and len(fake_slack.downloads) == 1   # the fake, then nothing


async def test_ssrf16_slack_loopback_needs_the_test_setting(make_gateway, fake_slack, monkeypatch):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    monkeypatch.delenv(files.LOOPBACK_ENV, raising=False)
    with pytest.raises(DeliveryError, match="loopback"):
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert fake_slack.downloads == []
    monkeypatch.setenv(files.LOOPBACK_ENV, "1")
    assert await gw.fetch_attachment(_ref(gw, f), 1_000_000) == PNG
