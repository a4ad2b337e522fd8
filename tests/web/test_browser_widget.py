"""The public widget in Chromium: proof of work, a visitor chat of one's own, streaming."""

from __future__ import annotations

from typing import Any

from tests.web.chatpage import WAIT_MS, last_answer, send, wait_answers, wait_online
from tests.web.conftest import LiveRelay, screenshot


def test_visitor_solves_the_challenge_and_chats(
    live_with_challenge: LiveRelay, new_page: Any
) -> None:
    live = live_with_challenge
    _, key, _ = live.tenant_session("Widget Co")
    with live.http() as http:
        r = http.post("/v1/public/codes", json={}, headers={"Authorization": f"Bearer {key}"})
        r.raise_for_status()
        widget_path = r.json()["widget_path"]
    page = new_page(viewport={"width": 420, "height": 720})
    page.goto(live.url + widget_path)
    page.locator("#empty").wait_for(timeout=WAIT_MS)
    send(page, "Hello from a visitor")
    wait_online(page)
    wait_answers(page, 1)
    assert "Hello from a visitor" in last_answer(page)
    visitor = page.evaluate("() => relayline.visitor")
    with live.http() as http:
        chats = http.get("/v1/chats", headers={"Authorization": f"Bearer {visitor['token']}"})
        assert [c["id"] for c in chats.json()["items"]] == [visitor["chat_id"]]
    screenshot(page, "widget")
    # A reload keeps the visitor's chat (no new challenge, no new chat).
    page.reload()
    wait_online(page)
    page.wait_for_function("() => relayline.conversation?.order.length === 2", timeout=WAIT_MS)
    assert page.evaluate("() => relayline.visitor.chat_id") == visitor["chat_id"]
    assert page.js_errors == []
