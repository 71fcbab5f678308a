"""#8 the dashboard in a real headless Chromium against the REAL app (not a fake runtime): log in,
see a route's state change when the mesh's broker goes away, retry a real dead letter from its row
and see it delivered to the recovered sink."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from .conftest import FAST_POLL, JWT_SECRET, WH_SECRET, admin_token, post_inbound, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")]


@pytest.fixture
async def page():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        try:
            pg = await browser.new_page()
            pg.set_default_timeout(20_000)
            yield pg
        finally:
            await browser.close()


async def test_dashboard_on_the_real_app_login_state_change_and_retry(file_app, dev_broker, sink, page):
    broken = {"on": True}
    sink.script["down"] = lambda body, n: (400, {}) if broken["on"] else (200, {})
    client, runtime, _ = await file_app({
        "admin": {"jwt_secret": JWT_SECRET},
        "mesh": {"dev": FAST_POLL},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.1, "max_attempts": 1, "poll_interval": 0.5},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general", "direction": "both", "binds": [
            {"gateway": "wh", "chat": "src", "direction": "in"},
            {"gateway": "wh", "chat": "down", "direction": "out", "options": {"url": sink.url("down")}},
        ]}],
    }, broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    await post_inbound(client, "src", {"id": "b1", "sender": "ann", "text": "to the dead letters"})
    async with asyncio.timeout(20):
        while await runtime.store.dlq_count() < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (letter,) = await runtime.store.dlq_list()

    await page.goto(str(client.make_url("/-/")))
    await page.wait_for_selector("#login:not([hidden])")
    await page.fill("#token", admin_token(sub="browser"))
    await page.click("#login-button")
    from playwright.async_api import expect  # polls from Playwright's side: the CSP forbids eval

    cell = page.locator("tr[data-route='general'] .route-state")
    await cell.wait_for()
    await expect(cell).to_contain_text("dev: connected", timeout=20_000)

    # the mesh's broker goes away: the route's state changes on the page without a reload
    await dev_broker.stop()
    await expect(cell).not_to_contain_text("dev: connected", timeout=20_000)
    assert "dev:" in await page.inner_text("tr[data-route='general'] .route-state")
    await page.wait_for_selector("#ready.bad")

    # retry the real dead letter from its row once the sink is back
    broken["on"] = False
    await page.wait_for_selector(f"tr[data-dlq='{letter.id}']")
    assert await page.inner_text("#dlq-count") == "1"
    await page.click(f"button.dlq-retry[data-id='{letter.id}']")
    await page.wait_for_selector(f"tr[data-dlq='{letter.id}']", state="detached")
    await wait_until(lambda: sink.texts("down") == ["ann: to the dead letters"], 20, "the retried dead letter")
    assert await page.inner_text("#dlq-count") == "0"
    assert await runtime.store.dlq_count() == 0
    audit = await runtime.store.audit_list(10)
    assert any(a["action"] == "dlq.retry" and a["actor"] == "browser" for a in audit), audit
