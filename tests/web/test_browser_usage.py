"""Daily figures in the browser, from seeded and computed days: a tenant's own in the chat's
Usage sheet (a session minted with ``analytics``), and every tenant's added up in the admin
console's Analytics tab, with the busiest tenants."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from relayline.store import analytics
from tests.conftest import ADMIN_KEY
from tests.web.conftest import LiveRelay, screenshot
from tests.web.test_browser_admin_analytics import seed_traffic, sign_in, sums

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def traffic(live: LiveRelay) -> dict[str, Any]:
    return seed_traffic(live)


def session_for(live: LiveRelay, tenant_id: str, **claims: Any) -> str:
    with live.http() as http:
        r = http.post(f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=ADMIN)
        r.raise_for_status()
        key = r.json()["key"]
        r = http.post(
            "/v1/sessions",
            json={"can_create_chats": True, "ttl_s": 3600, **claims},
            headers={"Authorization": f"Bearer {key}"},
        )
        r.raise_for_status()
        return str(r.json()["token"])


def usage_stat(page: Any, label: str) -> Any:
    return page.locator("#usage-totals .stat", has=page.locator(".stat__label", has_text=label))


def open_usage(page: Any, live: LiveRelay, token: str) -> None:
    page.goto(f"{live.url}/#session={token}")
    page.locator("#usage-open").click()
    expect(page.locator("#usage")).to_be_visible()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_chat_shows_the_tenants_own_usage(
    live: LiveRelay, new_page: Any, traffic: dict[str, Any], scheme: str
) -> None:
    token = session_for(live, traffic["ids"]["Acme"], analytics=True)
    page = new_page(color_scheme=scheme, viewport={"width": 1280, "height": 1000})
    page.goto(f"{live.url}/#session={token}")
    expect(page.locator("#usage-open")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    if scheme == "light":
        screenshot(page, "chat-usage-button")
    page.locator("#usage-open").click()
    expect(page.locator("#usage")).to_be_visible()
    acme, globex = sums(traffic, "Acme", 30), sums(traffic, "Globex", 30)
    assert acme["messages"] != globex["messages"]
    expect(usage_stat(page, "Messages").locator(".stat__value")).to_have_text(
        f"{acme['messages']:,}"
    )
    expect(usage_stat(page, "Failed").locator(".stat__value")).to_have_text(str(acme["failed"]))
    expect(page.locator("#usage-rows tr")).to_have_count(30)
    yesterday = (analytics.utc_today() - timedelta(days=1)).isoformat()
    expect(page.locator("#usage-rows tr").first).to_have_attribute("data-day", yesterday)
    expect(page.locator("#usage-charts canvas")).to_have_count(4)
    legend = page.locator("#usage-chart-failures .chart__legend")
    expect(legend.locator("[data-key=upstream_5xx]")).to_be_visible()
    expect(page.locator("#usage-tenants-card")).to_be_hidden()  # a tenant sees only its own
    screenshot(page, f"chat-usage-{scheme}")

    # A week; then closed with Escape, back to the chat.
    page.select_option("#usage-range", "7")
    expect(page.locator("#usage-rows tr")).to_have_count(7)
    week = sums(traffic, "Acme", 7)
    expect(usage_stat(page, "Messages").locator(".stat__value")).to_have_text(
        f"{week['messages']:,}"
    )
    page.keyboard.press("Escape")
    expect(page.locator("#usage")).to_be_hidden()
    expect(page.locator("#input")).to_be_visible()
    assert page.js_errors == []


def test_the_usage_sheet_on_a_phone(
    live: LiveRelay, new_page: Any, traffic: dict[str, Any]
) -> None:
    token = session_for(live, traffic["ids"]["Globex"], analytics=True)
    page = new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    open_usage(page, live, token)
    week = sums(traffic, "Globex", 30)
    expect(usage_stat(page, "Messages").locator(".stat__value")).to_have_text(
        f"{week['messages']:,}"
    )
    expect(page.locator("#usage-charts canvas")).to_have_count(4)
    screenshot(page, "chat-usage-phone")
    page.locator("#usage-close").click()
    expect(page.locator("#usage")).to_be_hidden()
    assert page.js_errors == []


def test_a_session_without_usage_is_not_offered_it(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session("Acme")
    page = new_page()
    page.goto(f"{live.url}/#session={token}")
    expect(page.locator("#input")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    expect(page.locator("#usage-open")).to_be_hidden()
    assert page.js_errors == []


def test_the_console_adds_up_all_tenants(
    live: LiveRelay, new_page: Any, traffic: dict[str, Any]
) -> None:
    page = new_page(viewport={"width": 1280, "height": 1500})
    sign_in(page, live)
    expect(page.locator("#analytics-tenant option:checked")).to_have_text("All tenants")
    acme, globex = sums(traffic, "Acme", 30), sums(traffic, "Globex", 30)
    total = acme["messages"] + globex["messages"]
    stat = page.locator(
        "#analytics-totals .stat", has=page.locator(".stat__label", has_text="Messages")
    )
    expect(stat.locator(".stat__value")).to_have_text(f"{total:,}")
    # The busiest tenants, Initech (no activity) not among them.
    rows = page.locator("#analytics-tenant-rows tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").first).to_have_text("Acme")
    expect(rows.nth(0).locator("td").nth(1)).to_have_text(f"{acme['messages']:,}")
    expect(rows.nth(1).locator("td").first).to_have_text("Globex")
    expect(page.locator("#analytics-tenants-note")).to_have_text("2 active in this range")
    # Percentiles do not add up: only the two charts of counts are drawn.
    expect(page.locator("#analytics-charts canvas")).to_have_count(2)
    expect(page.locator("#analytics-chart-latency")).to_be_hidden()
    expect(page.locator("#analytics-rows tr")).to_have_count(30)
    expect(page.locator("#analytics-table-card th:visible")).to_have_count(6)
    expect(page.locator("#analytics-rows tr").first.locator("td")).to_have_count(6)
    screenshot(page, "admin-analytics-all-tenants")

    # One tenant, then back to all of them.
    page.select_option("#analytics-tenant", label="Globex")
    expect(stat.locator(".stat__value")).to_have_text(f"{globex['messages']:,}")
    expect(page.locator("#analytics-tenants-card")).to_be_hidden()
    expect(page.locator("#analytics-charts canvas")).to_have_count(4)
    expect(page.locator("#analytics-table-card th:visible")).to_have_count(8)
    page.select_option("#analytics-tenant", label="All tenants")
    expect(stat.locator(".stat__value")).to_have_text(f"{total:,}")
    assert page.js_errors == []
