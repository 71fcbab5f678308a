"""Issue 15: the dashboard on the REAL app (started from a config file) in headless Chromium (Debian
package) driven by Playwright — log in, see the replicas line, search a message, open its trace, see
a live message arrive, retry a dead letter, compare the config file on disk (secrets masked) and
reload it.

Screenshots go to ``$CMGW_ARTEFACT_DIR`` (CI keeps that directory as the test's artefacts) or to the
test's temp directory; they are never committed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import jwt
import pytest
from claudemesh_gateway.plugins.webhook.testing import WebhookSink, signed_post
from claudemesh_gateway.testing import build_test_app_from_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")]

SECRET = "issue15-browser-jwt-secret-0123456789"
AUD = "claudemesh-gateway"
WH = "issue15-browser-webhook-secret-0123"
ROTATED = "issue15-browser-jwt-secret-rotated-98765"


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    d = Path(os.environ.get("CMGW_ARTEFACT_DIR") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def config_toml(state: Path, sink: WebhookSink, *, jwt_secret: str = SECRET, timeout: float = 10.0) -> str:
    return f"""
[server]
state_dir = "{state}"
shutdown_timeout = 5.0

[admin]
jwt_secret = "{jwt_secret}"

[gateways.wh]
type = "webhook"
secret = "{WH}"
timeout = {timeout}

[trace]
flush_interval = 0.05

[delivery]
max_attempts = 1
backoff_base = 0.05
poll_interval = 0.5

[[routes]]
name = "alerts"
binds = [
  {{gateway = "wh", chat = "src", direction = "in"}},
  {{gateway = "wh", chat = "up", direction = "out", options = {{url = "{sink.url('up')}"}}}},
]

[[routes]]
name = "billing"
binds = [
  {{gateway = "wh", chat = "bill", direction = "in"}},
  {{gateway = "wh", chat = "down", direction = "out", options = {{url = "{sink.url('down')}"}}}},
]
"""


@pytest.fixture
async def real_app(tmp_path: Path, aiohttp_server):
    sink = WebhookSink(WH)
    server = await aiohttp_server(sink.app(), host="127.0.0.1")
    sink.base = str(server.make_url("/sink"))
    broken = {"on": True}
    sink.script["down"] = lambda body, n: (400, {}) if broken["on"] else (200, {})
    path = tmp_path / "gateway.toml"
    path.write_text(config_toml(tmp_path / "gw", sink))
    client, runtime = await build_test_app_from_file(path)
    try:
        yield client, runtime, sink, broken, path
    finally:
        await client.close()


async def post(client, chat: str, payload: dict) -> None:
    body, headers = signed_post(payload, WH)
    resp = await client.post(f"/gateways/wh/{chat}", data=body, headers=headers)
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"],
        )
        try:
            yield b
        finally:
            await b.close()


async def test_search_trace_live_and_dead_letter_retry(real_app, browser, shots):
    from playwright.async_api import expect

    client, runtime, sink, broken, path = real_app
    for i in range(3):
        await post(client, "src", {"id": f"ok{i}", "sender": "ann", "text": f"disk {i} almost full"})
    await post(client, "bill", {"id": "inv-7", "sender": "bob", "text": "invoice 7"})
    async with asyncio.timeout(20):
        while len(sink.received["up"]) < 3 or await runtime.store.dlq_count() < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await runtime.trace.flush()

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    refused: list[str] = []  # everything must work under the dashboard's own CSP
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    await page.goto(str(client.make_url("/-/")))
    await page.wait_for_selector("#login:not([hidden])")
    token = jwt.encode({"sub": "browser", "aud": AUD, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    # keyboard only: the token field, then Enter on the button
    await page.focus("#token")
    await page.keyboard.type(token)
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page.locator(".chart[data-chart='alerts']")).to_contain_text("3 out", timeout=15_000)
    await expect(page.locator("#dlq-count")).to_have_text("1")
    await expect(page.locator("#live-state")).to_have_text("connected")
    await expect(page.locator("#replica-mode")).to_have_text("single process (SQLite)")  # no replicas on SQLite
    await expect(page.locator("#replica-detail")).to_be_hidden()
    await page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # search by the webhook's native id, open the trace
    await page.fill("#q", "ok1")
    await page.click("#search-button")
    row = page.locator("#results tr[data-message='webhook:wh:src:ok1']")
    await expect(row).to_contain_text("delivered")
    await row.locator("button.trace-open").click()
    await expect(page.locator("#trace-status")).to_have_text("delivered")
    steps = page.locator("#timeline li")
    await expect(steps).to_have_count(3)
    assert [await s.get_attribute("data-step") for s in await steps.all()] == ["received", "queued", "delivered"]
    await expect(page.locator("#timeline")).to_contain_text("delivered to wh/up [alerts]")
    await page.locator("#trace").screenshot(path=str(shots / "trace.png"))

    # a message arriving now shows in the live view without a reload
    await post(client, "src", {"id": "live1", "sender": "ann", "text": "new one"})
    live = page.locator("#live-rows tr[data-message='webhook:wh:src:live1'][data-step='delivered']")
    await expect(live).to_have_count(1)
    await page.locator("#live").screenshot(path=str(shots / "live.png"))

    # retry the dead letter from its row; its trace then shows the retry and the delivery
    broken["on"] = False
    dl = page.locator("#dlq tr[data-dlq]")
    await expect(dl).to_have_count(1)
    await dl.locator("button.dlq-retry").click()
    await expect(page.locator("#dlq-count")).to_have_text("0")
    async with asyncio.timeout(20):
        while not sink.received["down"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await page.select_option("#s-status", "")
    await page.fill("#q", "inv-7")
    await page.click("#search-button")
    await expect(page.locator("#results tr[data-message='webhook:wh:bill:inv-7']")).to_contain_text("delivered")
    await page.locator("#results tr[data-message='webhook:wh:bill:inv-7'] button.trace-open").click()
    await expect(page.locator("#timeline")).to_contain_text("dead letter retried by browser")
    await expect(page.locator("#trace-status")).to_have_text("delivered")
    await page.screenshot(path=str(shots / "after-retry.png"), full_page=True)

    # the config file changes on disk: the diff shows what changed, a secret only as changed
    await page.click("#config-diff")
    await expect(page.locator("#config-note")).to_contain_text("no change")
    path.write_text(config_toml(path.parent / "gw", sink, jwt_secret=ROTATED, timeout=12.5))
    await page.focus("#config-diff")
    await page.keyboard.press("Enter")
    secret_row = page.locator("#config-changes tr[data-path='admin.jwt_secret']")
    await expect(secret_row).to_contain_text("secret changed (value not shown)")
    await expect(secret_row).to_contain_text("on restart")
    timeout_row = page.locator("#config-changes tr[data-path='gateways.wh.timeout']")
    await expect(timeout_row).to_contain_text("12.5")
    await expect(timeout_row).to_contain_text("on reload")
    await expect(page.locator("#config-note")).to_contain_text("a restart is needed for [admin]")
    assert ROTATED not in await page.content() and SECRET not in await page.content()
    await page.locator("#config").screenshot(path=str(shots / "config-diff.png"))
    # reload: applied, [admin] named as needing a restart; the diff then lists only that
    await page.click("#config-reload")
    await expect(page.locator("#reload-status")).to_contain_text("applied")
    await expect(page.locator("#reload-restart")).to_contain_text("admin")
    await expect(timeout_row).to_have_count(0)
    await expect(secret_row).to_have_count(1)
    assert runtime.gateways["wh"].config.timeout == 12.5
    await page.locator("#config").screenshot(path=str(shots / "config-reloaded.png"))

    # usable on a phone: no sideways scrolling of the page itself
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.locator("#h-overview").scroll_into_view_if_needed()
    await page.screenshot(path=str(shots / "phone.png"), full_page=True)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    assert refused == []
    # the token never left the tab: sessionStorage only
    assert await page.evaluate("localStorage.length") == 0
