"""The dashboard in a real headless Chromium (Debian package) driven by Playwright:
log in, see a route's state change live, retry a dead letter."""

from __future__ import annotations

import shutil
import time

import jwt
import pytest
from aiohttp import web
from claudemesh_gateway.events import GatewayState
from claudemesh_gateway.web import setup_web
from web_fakes import AUD, SECRET, make_runtime

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")]


@pytest.fixture
async def served(aiohttp_server):
    runtime = make_runtime({"jwt_secret": SECRET, "audience": AUD})
    app = web.Application()
    setup_web(app, runtime)
    server = await aiohttp_server(app, host="127.0.0.1")
    return server, runtime


@pytest.fixture
async def page():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"],
        )
        try:
            pg = await browser.new_page()
            pg.set_default_timeout(15_000)
            yield pg
        finally:
            await browser.close()


async def test_login_route_state_and_dead_letter_retry(served, page):
    from playwright.async_api import expect

    server, runtime = served
    refused: list[str] = []  # the dashboard must work under its own Content-Security-Policy
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    base = str(server.make_url("/-/"))
    await page.goto(base)
    await page.wait_for_selector("#login:not([hidden])")

    # a wrong-audience token is refused and the form says why
    bad = jwt.encode({"aud": "other", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    await page.fill("#token", bad)
    await page.click("#login-button")
    await page.wait_for_selector("#error:has-text('audience')")

    good = jwt.encode({"sub": "browser", "aud": AUD, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    await page.fill("#token", good)
    await page.click("#login-button")
    state_cell = page.locator("tr[data-route='r1'] .route-state")
    await state_cell.wait_for()
    # (expect() polls from Playwright's side: the dashboard's CSP forbids the eval wait_for_function needs)
    await expect(state_cell).to_contain_text("webhook: connected", timeout=15_000)

    # the gateway goes down: the dashboard shows it without a reload
    runtime.states["webhook"] = (GatewayState.TRANSIENT_DISCONNECT, "sink unreachable", time.time())
    await expect(state_cell).to_contain_text("transient_disconnect", timeout=15_000)
    await page.wait_for_selector("#ready.bad")

    # retry the dead letter from its row
    await page.wait_for_selector("tr[data-dlq='7']")
    assert await page.inner_text("#dlq-count") == "1"
    await page.click("button.dlq-retry[data-id='7']")
    await page.wait_for_selector("tr[data-dlq='7']", state="detached")
    assert await page.inner_text("#dlq-count") == "0"
    assert [d.item.message["id"] for d in runtime.store.retried] == ["m1"]
    assert runtime.store.audits[-1][:2] == ("browser", "dlq.retry")
    # the token lives in sessionStorage only
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("sessionStorage.getItem('claudemesh-gateway-token')") == good
    assert refused == []
