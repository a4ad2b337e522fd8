"""The admin console in Chromium: sign-in, overview, tenants and keys, a tenant's agent
settings, live workers."""

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
    # Every scope is ticked by default, terminals included.
    for scope in ("chats", "sessions", "publish", "terminals"):
        expect(detail.locator("td .badge", has_text=scope).first).to_be_visible()
    # Every section sits inside the console's column: nothing runs past the window's edge.
    assert page.evaluate("document.querySelector('#tenants').closest('main') !== null")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
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


def test_admin_edits_the_agent_settings(live: LiveRelay, new_page: Any) -> None:
    tenant_id, _, _ = live.tenant_session("Initech")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    path = f"/v1/admin/tenants/{tenant_id}/agent"
    page = new_page(viewport={"width": 1280, "height": 1400})
    sign_in(page, live)
    page.click("[data-tab=tenants]")
    page.locator("#tenant-rows tr", has_text="Initech").click()
    form = page.locator("form.agent-form")
    temperature = form.locator("input[name=temperature]")
    top_p = form.locator("input[name=top_p]")
    max_tokens = form.locator("input[name=max_tokens]")
    stop = form.locator("#agent-stop")
    chips = form.locator(".stop-chip__text")
    # The bounds are the inputs' own; empty means the worker's default.
    bounds = [(temperature, "0", "2"), (top_p, "0", "1"), (max_tokens, "1", "32768")]
    for field, low, high in bounds:
        expect(field).to_have_value("")
        expect(field).to_have_attribute("min", low)
        expect(field).to_have_attribute("max", high)
    expect(stop).to_have_attribute("maxlength", "64")
    expect(chips).to_have_count(0)

    form.get_by_label("System prompt").fill("Answer in one short paragraph.")
    temperature.fill("0.7")
    top_p.fill("0.9")
    max_tokens.fill("256")
    stop.fill("END")
    stop.press("Enter")
    stop.fill("\\n\\nUser:")
    stop.press("Enter")
    stop.fill("###")
    stop.press("Enter")
    stop.press("Backspace")  # takes the last one back for editing
    expect(stop).to_have_value("###")
    stop.fill("")
    expect(chips).to_have_text(["END", "\\n\\nUser:"])
    keep = form.get_by_label("keep completions as chats")
    expect(keep).not_to_be_checked()
    keep.check()
    form.locator("button[type=submit]").click()
    expect(page.locator(".toast--ok")).to_contain_text("Agent settings saved", use_inner_text=True)
    with httpx.Client(base_url=live.url, timeout=10) as http:
        saved = http.get(path, headers=admin).json()
    assert saved["temperature"] == 0.7 and saved["top_p"] == 0.9 and saved["max_tokens"] == 256
    assert saved["stop"] == ["END", "\n\nUser:"]
    assert saved["system_prompt"] == "Answer in one short paragraph."
    assert saved["model"] == "local" and len(saved["tools"]) == 4
    assert saved["store_completions"] is True

    # After a reload the console shows what the relay stored.
    page.reload()
    page.locator("#console").wait_for(timeout=WAIT_MS)
    page.click("[data-tab=tenants]")
    page.locator("#tenant-rows tr", has_text="Initech").click()
    expect(temperature).to_have_value("0.7")
    expect(top_p).to_have_value("0.9")
    expect(max_tokens).to_have_value("256")
    expect(chips).to_have_text(["END", "\\n\\nUser:"])
    expect(form.get_by_label("Model")).to_have_value("local")
    expect(keep).to_be_checked()
    form.locator("h4", has_text="Sampling").scroll_into_view_if_needed()
    screenshot(page, "admin-agent-settings")

    # A value the form lets through but the relay refuses: its reason shows beside the
    # button, the field is marked, what was typed stays and nothing is stored.
    top_p.fill("0")
    max_tokens.fill("")
    form.locator("button[type=submit]").click()
    error = page.locator("#agent-error")
    expect(error).to_contain_text("top_p: Input should be greater than 0", use_inner_text=True)
    expect(top_p).to_have_attribute("aria-invalid", "true")
    expect(top_p).to_have_value("0")
    expect(temperature).to_have_value("0.7")
    expect(chips).to_have_text(["END", "\\n\\nUser:"])
    with httpx.Client(base_url=live.url, timeout=10) as http:
        assert http.get(path, headers=admin).json()["top_p"] == 0.9

    # Past a bound the form itself refuses: nothing is sent.
    temperature.fill("2.5")
    form.locator("button[type=submit]").click()
    expect(form.locator("input[name=temperature]:invalid")).to_have_count(1)
    temperature.fill("0.7")

    # Fixed, it saves; the emptied field is the worker's default again, and a stop sequence
    # still being typed is kept.
    top_p.fill("0.5")
    expect(top_p).not_to_have_attribute("aria-invalid", "true")
    stop.fill("###")
    form.locator("button[type=submit]").click()
    expect(error).to_be_hidden()
    expect(chips).to_have_text(["END", "\\n\\nUser:", "###"])
    with httpx.Client(base_url=live.url, timeout=10) as http:
        saved = http.get(path, headers=admin).json()
    assert saved["top_p"] == 0.5 and saved["max_tokens"] is None and saved["temperature"] == 0.7
    assert saved["stop"] == ["END", "\n\nUser:", "###"]
    assert page.js_errors == []


def test_agent_settings_refusal_in_the_dark(live: LiveRelay, new_page: Any) -> None:
    live.tenant_session("Hooli")
    page = new_page(color_scheme="dark", viewport={"width": 1280, "height": 1400})
    sign_in(page, live)
    page.click("[data-tab=tenants]")
    page.locator("#tenant-rows tr", has_text="Hooli").click()
    form = page.locator("form.agent-form")
    form.locator("input[name=temperature]").fill("0.2")
    form.locator("input[name=top_p]").fill("0")
    form.locator("#agent-stop").fill("\\n\\n")
    form.locator("#agent-stop").press("Enter")
    form.locator("button[type=submit]").click()
    expect(page.locator("#agent-error")).to_contain_text("greater than 0", use_inner_text=True)
    form.locator("h4", has_text="Sampling").scroll_into_view_if_needed()
    screenshot(page, "admin-agent-settings-dark")
    assert page.js_errors == []
