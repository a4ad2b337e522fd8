"""The admin console in Chromium: sign-in, overview, tenants and keys, live workers."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.conftest import ADMIN_KEY
from tests.web.chatpage import WAIT_MS
from tests.web.conftest import LiveRelay, screenshot


def sign_in(page: Any, live: LiveRelay) -> None:
    page.goto(f"{live.url}/admin")
    page.fill("#admin-key", "wrong-key")
    page.press("#admin-key", "Enter")
    page.locator("#login-error").wait_for(timeout=WAIT_MS)
    expect(page.locator("#login-error")).to_contain_text("not accepted", use_inner_text=True)
    page.fill("#admin-key", ADMIN_KEY)
    page.press("#admin-key", "Enter")
    page.locator("#console").wait_for(timeout=WAIT_MS)


def test_admin_creates_a_tenant_and_a_key(live: LiveRelay, new_page: Any) -> None:
    page = new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, live)
    page.wait_for_function(
        "() => document.querySelectorAll('#stats .stat').length >= 6", timeout=WAIT_MS
    )
    expect(page.locator("#health-row")).to_contain_text("Ready", use_inner_text=True)
    expect(page.locator("#health-row")).to_contain_text(
        re.compile("1 online", re.IGNORECASE), use_inner_text=True
    )
    screenshot(page, "admin-overview")

    page.click("[data-tab=tenants]")
    page.fill("#tenant-name", "Globex")
    page.click("#tenant-form button[type=submit]")
    detail = page.locator("#tenant-detail")
    detail.locator("h2", has_text="Globex").wait_for(timeout=WAIT_MS)
    detail.get_by_placeholder("Key name (optional)").fill("production server")
    detail.locator(".key-form button[type=submit]").click()
    secret = page.locator("#new-key-value")
    expect(secret).to_have_text(re.compile(r"^\s*rl_\w+"), use_inner_text=True)
    key = secret.inner_text().strip()
    expect(page.locator(".secret__copy")).to_be_visible()
    screenshot(page, "admin-tenants")

    # The key shown once really works, and a revoked key stops working.
    with httpx.Client(base_url=live.url, timeout=10) as http:
        r = http.post("/v1/chats", json={"title": "x"}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 201, r.text
        revoke = detail.locator("button", has_text="Revoke")
        revoke.click()
        detail.locator("button", has_text="Confirm revoke").click()
        detail.locator(".badge", has_text="revoked").wait_for(timeout=WAIT_MS)
        expect(page.locator("#new-key-value")).to_have_count(0)  # the secret is shown only once
        r = http.get("/v1/chats", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401, r.text

    page.click("[data-tab=workers]")
    row = page.locator("#worker-rows tr", has_text="browser-worker")
    row.wait_for(timeout=WAIT_MS)
    expect(row).to_contain_text("0 / 4", use_inner_text=True)
    expect(row).to_contain_text("closed", use_inner_text=True)
    screenshot(page, "admin-workers")
    expect(page.locator("#conn")).to_have_text("Live", use_inner_text=True)
    assert page.js_errors == []


def test_admin_sees_worker_state_live(live: LiveRelay, new_page: Any) -> None:
    page = new_page(color_scheme="dark")
    sign_in(page, live)
    page.click("[data-tab=workers]")
    page.locator("#worker-rows tr", has_text="browser-worker").wait_for(timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.getElementById('conn').dataset.state === 'online'", timeout=WAIT_MS
    )
    before = page.evaluate("() => relaylineAdmin.liveEvents")
    live.stop_worker()
    live.start_worker()
    # The fresh worker announces itself on the admin topic: the row updates from the event,
    # long before the next poll.
    page.wait_for_function("n => relaylineAdmin.liveEvents > n", arg=before, timeout=WAIT_MS)
    # The old worker's last states (draining, offline) are live events too and may come first.
    page.wait_for_function(
        "() => document.getElementById('worker-rows').innerText.includes('ready')",
        timeout=WAIT_MS,
    )
    screenshot(page, "admin-workers-dark")
