"""The admin console answers "is anyone waiting on an answer, why, and since when?": the
overview's turn figures and workers' breakers, and the failed turns by tenant, in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.web.conftest import LiveRelay, screenshot
from tests.web.test_browser_admin import sign_in
from tests.worker.llm_fake_upstream import FakeUpstream, status

LOADING = "model server is loading (503 from upstream)"


@pytest.fixture
def broken_model(live: LiveRelay) -> Iterator[dict[str, Any]]:
    """A model server that answers every completion with a 503: the worker settings that use
    it (one attempt a turn, the breaker opening after two failures)."""
    upstream = FakeUpstream()
    upstream.play(status(503, LOADING))
    url = live.call(upstream.start())
    try:
        yield {
            "llm_url": url,
            "llm_probe": False,
            "llm_max_attempts": 1,
            "breaker_failures": 2,
            "breaker_recovery_s": 600.0,
        }
    finally:
        live.call(upstream.close())


def ask(live: LiveRelay, key: str, content: str, request_id: str) -> str:
    """A new chat of the tenant whose key is ``key``, asked ``content``: its turn id."""
    auth = {"Authorization": f"Bearer {key}"}
    with live.http() as http:
        r = http.post("/v1/chats", json={"title": content[:40]}, headers=auth)
        r.raise_for_status()
        chat_id = r.json()["id"]
        r = http.post(
            f"/v1/chats/{chat_id}/messages",
            json={"content": content},
            headers={**auth, "X-Request-ID": request_id},
        )
        r.raise_for_status()
        return str(r.json()["turn_id"])


def figure(page: Any, label: str) -> Any:
    return page.locator("#turn-stats .stat", has=page.locator(".stat__label", has_text=label))


def test_the_overview_shows_who_waits_and_why_turns_failed(
    live: LiveRelay, new_page: Any, broken_model: dict[str, Any]
) -> None:
    _, key, _ = live.tenant_session("Acme")
    page = new_page(viewport={"width": 1280, "height": 1060})
    sign_in(page, live)
    waiting = figure(page, "Waiting")
    expect(waiting.locator(".stat__value")).to_have_text("0")
    expect(page.locator("#failures-card")).to_contain_text("No turn failed in the last hour")
    worker = page.locator("#overview-worker-list [data-worker=browser-worker]")
    expect(worker).to_contain_text("closed")

    # No worker: the question waits, and the overview says since when.
    live.stop_worker()
    ask(live, key, "Is anyone there?", "req-browser-wait-0001")
    expect(waiting.locator(".stat__value")).to_have_text("1")
    expect(waiting).to_contain_text("no worker is online")
    expect(figure(page, "Longest wait").locator(".stat__value")).to_have_text(re.compile(r"\d"))
    expect(figure(page, "Longest wait")).to_contain_text("waiting since")
    expect(page.locator("#overview-workers-empty")).to_be_visible()
    expect(waiting).to_have_class(re.compile(r"\bstat--bad\b"))

    # A worker in front of a failing model server takes it and fails it: the queue empties,
    # the failure is counted by category, and the worker's breaker and last error show.
    live.start_worker(**broken_model)
    failures = page.locator("#failures-card")
    upstream_5xx = failures.locator("[data-category=upstream_5xx]")
    expect(upstream_5xx.locator(".failures__count")).to_have_text("1")
    expect(waiting.locator(".stat__value")).to_have_text("0")
    expect(worker).to_contain_text("upstream_5xx")

    # Two failures open its breaker; the next turn fails without reaching the model server.
    ask(live, key, "Still there?", "req-browser-fail-0002")
    expect(upstream_5xx.locator(".failures__count")).to_have_text("2")
    expect(worker.locator(".badge--bad", has_text="open")).to_be_visible()
    ask(live, key, "Hello?", "req-browser-fail-0003")
    expect(failures.locator("[data-category=circuit_open] .failures__count")).to_have_text("1")
    expect(failures).to_contain_text("3 failed turns · 100% of the turns that ended")
    screenshot(page, "admin-overview-turns")

    # The workers tab says the same, with what the breaker and the error mean.
    page.click("[data-tab=workers]")
    row = page.locator("#worker-rows tr", has_text="browser-worker")
    expect(row).to_contain_text("circuit_open")
    expect(row).to_contain_text("Calls to the model server are paused")
    assert page.js_errors == []


def test_failed_turns_are_listed_with_their_correlation_id_by_tenant(
    live: LiveRelay, new_page: Any, broken_model: dict[str, Any]
) -> None:
    _, acme_key, _ = live.tenant_session("Acme")
    _, globex_key, _ = live.tenant_session("Globex")
    live.stop_worker()
    live.start_worker(**{**broken_model, "breaker_failures": 100})
    asked = [ask(live, acme_key, f"Acme question {i}", f"req-acme-{i:04d}") for i in range(21)]
    ask(live, globex_key, "Globex question", "req-globex-0001")

    page = new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, live)
    page.click("[data-tab=failed]")
    rows = page.locator("#failed-rows tr")
    # The newest first: Globex's, then Acme's last; 20 a page.
    expect(rows).to_have_count(20)
    newest = rows.first
    expect(newest).to_contain_text("Globex")
    expect(newest.locator(".copy-value")).to_have_text("req-globex-0001")
    expect(newest).to_contain_text("upstream_5xx")
    expect(newest).to_contain_text(LOADING)
    expect(newest.locator(".copy-btn")).to_have_accessible_name(
        "Copy correlation id req-globex-0001"
    )
    expect(newest.locator(".timing", has_text="Ran")).to_contain_text(re.compile(r"\d"))
    expect(page.locator("#failed-range")).to_have_text("1\u201320")
    screenshot(page, "admin-failed-turns")

    # Only one tenant's: a choice fed by the tenants list.
    page.select_option("#failed-tenant", label="Acme")
    expect(rows.first.locator(".copy-value")).to_have_text("req-acme-0020")
    expect(rows).to_have_count(20)
    expect(page.locator("#failed-rows")).not_to_contain_text("Globex")
    # Acme's oldest failure is on the second page, and back again.
    page.click("#failed-older")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".copy-value")).to_have_text("req-acme-0000")
    expect(rows.first).to_have_attribute("data-turn", asked[0])
    expect(page.locator("#failed-range")).to_have_text("21 of 21")
    expect(page.locator("#failed-older")).to_be_disabled()
    page.click("#failed-newer")
    expect(rows.first.locator(".copy-value")).to_have_text("req-acme-0020")

    page.select_option("#failed-tenant", label="Globex")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".copy-value")).to_have_text("req-globex-0001")
    expect(page.locator("#failed-pager")).to_be_hidden()
    assert page.js_errors == []


def test_failed_turns_in_the_dark(
    live: LiveRelay, new_page: Any, broken_model: dict[str, Any]
) -> None:
    _, key, _ = live.tenant_session("Initech")
    live.stop_worker()
    live.start_worker(**broken_model)
    for i in range(3):
        ask(live, key, f"Question {i}", f"req-initech-{i:04d}")

    page = new_page(color_scheme="dark", viewport={"width": 1280, "height": 1000})
    sign_in(page, live)
    expect(page.locator("#failures-card [data-category=circuit_open]")).to_be_visible()
    screenshot(page, "admin-overview-turns-dark")
    page.click("[data-tab=failed]")
    expect(page.locator("#failed-rows tr")).to_have_count(3)
    screenshot(page, "admin-failed-turns-dark")
    assert page.js_errors == []
