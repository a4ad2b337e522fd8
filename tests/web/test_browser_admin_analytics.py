"""The admin console's analytics tab, in Chromium: a tenant's last 30 UTC days as charts
(messages, failed turns by category stacked, time to first token and latency p50/p95), the
range's totals and a table of the days, from the figures the relay computed."""

from __future__ import annotations

import math
import random
import re
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from relayline.store import analytics, tenants
from relayline.store.database import Database
from tests.conftest import ADMIN_KEY
from tests.store.analytics_data import Writer, brute_force
from tests.web.chatpage import WAIT_MS
from tests.web.conftest import LiveRelay, screenshot

DAYS = 30
CATEGORIES = ["upstream_5xx", "timeout", "circuit_open", "incomplete"]


def seed_traffic(live: LiveRelay) -> dict[str, Any]:
    """Thirty days of turns for Acme (an incident eight days ago: model server errors, an open
    breaker, slow answers), a week for Globex, nothing for Initech; every day computed."""
    today = analytics.utc_today()
    first = today - timedelta(days=DAYS)

    async def seed() -> dict[str, Any]:
        assert live.relay is not None
        db: Database = live.relay.app.http.state.relay.db
        rng = random.Random(7)
        ids: dict[str, str] = {}
        async with db.write() as session:
            for name in ("Acme", "Globex", "Initech"):
                ids[name] = (await tenants.create_tenant(session, name)).id
        async with db.write() as session:
            for name, span in (("Acme", DAYS), ("Globex", 7)):
                writer = Writer(session, ids[name])
                for offset in range(span):
                    day = today - timedelta(days=span - offset)
                    incident = name == "Acme" and (today - day).days == 8
                    wave = 1 + 0.35 * math.sin(offset / 3) + (0.25 if day.weekday() < 5 else -0.2)
                    for _ in range(int((34 if name == "Acme" else 12) * wave) + rng.randint(0, 6)):
                        created = analytics.day_start_ms(day) + rng.randint(0, 22 * 3_600_000)
                        failing = rng.random() < (0.45 if incident else 0.06)
                        state = (
                            "failed"
                            if failing
                            else rng.choices(["completed", "cancelled"], [95, 5])[0]
                        )
                        slow = 2.6 if incident else 1.0
                        first_token = int(rng.lognormvariate(5.9, 0.45) * slow)
                        writer.turn(
                            created,
                            state=state,
                            finished=created + rng.randint(2_000, 40_000),
                            category=rng.choices(CATEGORIES, [6, 3, 4 if incident else 0, 1])[0]
                            if failing
                            else None,
                            metric={
                                "first_token_ms": first_token,
                                "latency_ms": first_token
                                + int(rng.lognormvariate(8.1, 0.5) * slow),
                                "tokens_in": rng.randint(200, 3000),
                                "tokens_out": rng.randint(40, 900),
                                "usage_source": rng.choice(["reported", "counted", "estimated"]),
                            },
                        )
        for day in analytics.days(first, today - timedelta(days=1)):
            await analytics.aggregate_day(db, day, today=today, retention_days=0)
        return {"ids": ids, "expected": await brute_force(db)}

    return live.call(seed(), timeout=60)


def sign_in(page: Any, live: LiveRelay) -> None:
    page.goto(f"{live.url}/admin#analytics")
    page.fill("#admin-key", ADMIN_KEY)
    page.press("#admin-key", "Enter")
    expect(page.locator("#console")).to_be_visible()


def stat(page: Any, label: str) -> Any:
    return page.locator("#analytics-totals .stat", has=page.locator(".stat__label", has_text=label))


@pytest.fixture
def traffic(live: LiveRelay) -> dict[str, Any]:
    return seed_traffic(live)


def sums(traffic: dict[str, Any], name: str, days: int) -> dict[str, int]:
    tenant = traffic["ids"][name]
    today = analytics.utc_today()
    wanted = {(today - timedelta(days=n)).isoformat() for n in range(1, days + 1)}
    rows = [r for (t, d), r in traffic["expected"].items() if t == tenant and d in wanted]
    return {k: sum(r[k] for r in rows) for k in ("messages", "failed", "answered")}


def test_a_tenants_days_as_charts(live: LiveRelay, new_page: Any, traffic: dict[str, Any]) -> None:
    page = new_page(viewport={"width": 1280, "height": 1400})
    sign_in(page, live)
    expect(page.locator("[data-tab=analytics]")).to_have_attribute("aria-current", "page")
    # All tenants are shown first; Acme's 30 days up to yesterday once chosen.
    expect(page.locator("#analytics-tenant option:checked")).to_have_text("All tenants")
    page.select_option("#analytics-tenant", label="Acme")
    acme = sums(traffic, "Acme", 30)
    expect(stat(page, "Messages").locator(".stat__value")).to_have_text(f"{acme['messages']:,}")
    expect(stat(page, "Failed").locator(".stat__value")).to_have_text(str(acme["failed"]))
    expect(page.locator("#analytics-rows tr")).to_have_count(30)
    yesterday = (analytics.utc_today() - timedelta(days=1)).isoformat()
    expect(page.locator("#analytics-rows tr").first).to_have_attribute("data-day", yesterday)
    # Four charts drawn, the failures' legend naming the categories seen.
    expect(page.locator("#analytics-charts canvas")).to_have_count(4)
    legend = page.locator("#analytics-chart-failures .chart__legend")
    for category in ("upstream_5xx", "timeout", "circuit_open"):
        expect(legend.locator(f"[data-key={category}]")).to_be_visible()
    expect(page.locator("#analytics-through")).to_contain_text("computed through")

    # Pointing at the incident's day reads its figures out.
    incident = analytics.utc_today() - timedelta(days=8)
    index = (incident - (analytics.utc_today() - timedelta(days=30))).days
    over = page.locator("#analytics-chart-failures .u-over")
    box = over.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * (index + 0.5) / 30, box["y"] + box["height"] / 2)
    label = f"{incident:%b} {incident.day}"
    expect(page.locator("#analytics-chart-failures .chart__readout")).to_have_text(
        re.compile(rf"^{label} · \d+ failed: .*upstream_5xx \d+")
    )
    first_token = page.locator("#analytics-chart-first-token .u-over")
    box = first_token.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * (index + 0.5) / 30, box["y"] + 10)
    expect(page.locator("#analytics-chart-first-token .chart__readout")).to_have_text(
        re.compile(rf"^{label} · p50 \d.* · p95 \d")
    )
    page.mouse.move(0, 0)
    screenshot(page, "admin-analytics")

    # A week only.
    page.select_option("#analytics-range", "7")
    expect(page.locator("#analytics-rows tr")).to_have_count(7)
    week = sums(traffic, "Acme", 7)
    expect(stat(page, "Messages").locator(".stat__value")).to_have_text(f"{week['messages']:,}")

    # A tenant without traffic: its computed days are zeros, nothing failed.
    page.select_option("#analytics-tenant", label="Initech")
    expect(stat(page, "Messages").locator(".stat__value")).to_have_text("0")
    expect(stat(page, "Failed")).to_contain_text("no turn ended")
    expect(legend).to_contain_text("no failed turn in this range")
    expect(page.locator("#analytics-rows tr")).to_have_count(7)
    assert page.js_errors == []


def test_the_charts_in_the_dark(live: LiveRelay, new_page: Any, traffic: dict[str, Any]) -> None:
    page = new_page(color_scheme="dark", viewport={"width": 1280, "height": 1400})
    sign_in(page, live)
    page.select_option("#analytics-tenant", label="Acme", timeout=WAIT_MS)
    # On a busy machine the charts take a while: wait for them as long as for any page.
    expect(page.locator("#analytics-charts canvas")).to_have_count(4, timeout=WAIT_MS)
    expect(page.locator("#analytics-rows tr")).to_have_count(30, timeout=WAIT_MS)
    screenshot(page, "admin-analytics-dark")
    assert page.js_errors == []


def test_no_day_computed_yet(live: LiveRelay, new_page: Any) -> None:
    live.tenant_session("Acme")
    page = new_page()
    sign_in(page, live)
    expect(page.locator("#analytics-empty")).to_contain_text(
        "No day of this range has been computed"
    )
    expect(page.locator("#analytics-charts")).to_be_hidden()
    expect(page.locator("#analytics-through")).to_have_text("UTC days · none computed yet")
    assert page.js_errors == []
