"""The console in a real browser (Debian's chromium through Playwright) against the engine run by its CLI.

Adds a camera through the dashboard's form and waits for its alarm, with a snapshot, to arrive in the live feed
without a page reload. Screenshots land in the test's tmp folder and in /tmp for people to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.web.engine import ALARM_TIMEOUT_S, EngineProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-quic"]
SHARED_SCREENSHOT = Path("/tmp/edgebox-console.png")
SHARED_PHONE_SCREENSHOT = Path("/tmp/edgebox-console-phone.png")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: run scripts/install-system-deps.sh"),
]


def _launch(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def test_camera_added_in_the_ui_raises_a_live_alarm_with_snapshot(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with EngineProcess(tmp_path, with_demo_cameras=False) as engine, sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900}, color_scheme="dark")
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(engine.base_url + "/")
            expect(page.locator("#cameras-empty")).to_be_visible()
            expect(page.locator("#feed-status")).to_have_text("Live", timeout=30_000)
            page.evaluate("window.__sameDocument = true")  # a reload would drop this

            page.click("#add-camera-btn")
            page.fill("input[name=camera_id]", "ui-lobby")
            page.fill("input[name=url]", "demo://person")
            page.select_option("select[name=workflow_id]", "people")
            page.fill("input[name=fps]", "2")
            page.click("#add-camera-form button[type=submit]")
            expect(page.locator("#add-camera-dialog")).not_to_be_visible()
            expect(page.locator('.camera-card[data-camera="ui-lobby"]')).to_be_visible(timeout=30_000)

            thumbnail = page.locator('#alarm-feed .alarm-item[data-camera="ui-lobby"] img.alarm-thumb').first
            thumbnail.wait_for(timeout=ALARM_TIMEOUT_S * 1000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle(),
                                   timeout=30_000)
            assert page.evaluate("window.__sameDocument") is True
            expect(page.locator('.camera-card[data-camera="ui-lobby"] .camera-view img')).to_be_visible(
                timeout=30_000)
            assert errors == []

            page.wait_for_timeout(1500)  # let the card's next frame and counters settle for the picture
            page.screenshot(path=tmp_path / "console.png")
            shutil.copyfile(tmp_path / "console.png", SHARED_SCREENSHOT)

            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                     color_scheme="dark")
            phone.goto(engine.base_url + "/")
            expect(phone.locator('.camera-card[data-camera="ui-lobby"] .camera-view img')).to_be_visible(
                timeout=30_000)
            phone.locator("#alarm-feed img.alarm-thumb").first.wait_for(timeout=30_000)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the dashboard scrolls sideways on a phone ({width}px wide)"
            phone.screenshot(path=tmp_path / "console-phone.png", full_page=True)
            shutil.copyfile(tmp_path / "console-phone.png", SHARED_PHONE_SCREENSHOT)
        finally:
            browser.close()


def test_camera_page_shows_live_video_and_removes_the_camera(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with EngineProcess(tmp_path) as engine, sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, color_scheme="light")
            page.goto(engine.base_url + "/cameras/demo-corridor")
            page.wait_for_function("() => { const i = document.querySelector('#camera-stream');"
                                   " return i && !i.hidden && i.naturalWidth > 0; }", timeout=ALARM_TIMEOUT_S * 1000)
            expect(page.locator("#camera-state")).to_contain_text("Streaming")
            page.screenshot(path=tmp_path / "camera-page.png")
            page.on("dialog", lambda dialog: dialog.accept())
            page.click("#remove-camera")
            page.wait_for_url(engine.base_url + "/", timeout=30_000)
            expect(page.locator('.camera-card[data-camera="demo-lobby"]')).to_be_visible()
            expect(page.locator('.camera-card[data-camera="demo-corridor"]')).to_have_count(0)
        finally:
            browser.close()
