"""The chat page in Chromium against a real relay and worker: streaming, Markdown, two tabs,
reload mid-answer, scrolling, tool approvals, the debug overlay, an answer cut at the length
limit, a message sent before the page has its chat list."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.conftest import ADMIN_KEY
from tests.web.chatpage import (
    WAIT_MS,
    assistant_count,
    chat_id,
    current_token,
    last_answer,
    open_chat,
    send,
    wait_answers,
    wait_online,
    wait_streaming,
)
from tests.web.conftest import TOOLS, LiveRelay, screenshot

QUESTION = "How do relays keep a **stream** going when a tab reloads? Please answer with code."


def test_stream_is_rendered_as_markdown_in_two_pages(live: LiveRelay, new_page: Any) -> None:
    _, key, token = live.tenant_session()
    live.model.delay_s = 0.03
    light = open_chat(new_page, live, token)
    screenshot(light, "chat-empty-light")
    send(light, QUESTION)
    cid = chat_id(light)
    dark = open_chat(new_page, live, current_token(light), cid, color_scheme="dark")
    wait_streaming(light, 120)
    wait_streaming(dark, 120)
    screenshot(light, "chat-streaming-light")
    screenshot(dark, "chat-streaming-dark")
    expect(light.locator(".msg--assistant.is-streaming")).to_have_count(1)
    wait_answers(light, 1)
    wait_answers(dark, 1)
    screenshot(light, "chat-light")
    screenshot(dark, "chat-dark")

    stored = [m for m in live.messages(key, cid) if m["role"] == "assistant"]
    assert len(stored) == 1
    assert last_answer(light) == last_answer(dark) == stored[0]["content"]
    answer = light.locator(".msg--assistant").last
    # Markdown: quote, list, bold, highlighted code with a copy button.
    expect(answer.locator("blockquote strong").first).to_have_text("stream", use_inner_text=True)
    expect(answer.locator("ul li")).to_have_count(3)
    code = answer.locator(".code-block")
    expect(code.locator(".code-block__lang")).to_have_text("python", use_inner_text=True)
    expect(code.locator(".hljs-keyword").first).to_be_attached()
    expect(code.locator("button[data-action=copy-code]")).to_have_count(1)
    # The user's own message went through the same renderer.
    expect(light.locator(".msg--user .msg__body strong")).to_have_text(
        "stream", use_inner_text=True
    )
    assert light.js_errors == [] and dark.js_errors == []


def test_reload_mid_answer_continues_without_repeated_text(live: LiveRelay, new_page: Any) -> None:
    _, key, token = live.tenant_session()
    live.model.delay_s = 0.04
    page = open_chat(new_page, live, token)
    send(page, "Tell me about resuming streams after a reload, in detail please.")
    cid = chat_id(page)
    wait_streaming(page, 80)
    page.reload()
    # The snapshot's partial text shows at once; from then on the answer may only grow.
    page.wait_for_function(
        "() => (relayline.conversation?.activeTurn?.message_id && "
        "relayline.conversation.get(relayline.conversation.activeTurn.message_id)"
        "?.content.length) >= 80",
        timeout=WAIT_MS,
    )
    page.evaluate(
        """() => {
            window.__seen = [];
            const c = relayline.conversation;
            const timer = setInterval(() => {
                const id = c.activeTurn?.message_id;
                if (id) window.__seen.push(c.get(id).content);
                else clearInterval(timer);
            }, 20);
        }"""
    )
    wait_answers(page, 1)
    final = last_answer(page)
    stored = [m for m in live.messages(key, cid) if m["role"] == "assistant"]
    assert final == stored[0]["content"]
    seen: list[str] = page.evaluate("() => window.__seen")
    assert seen, "the answer was still streaming after the reload"
    assert all(final.startswith(text) for text in seen), "text was repeated or rewritten"
    expect(page.locator(".msg--assistant")).to_have_count(1)
    assert page.js_errors == []


def test_scrolling_up_during_a_stream_shows_the_badge(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session()
    live.model.delay_s = 0.02
    page = open_chat(new_page, live, token, viewport={"width": 900, "height": 460})
    send(page, "First message, to have something to scroll back to.")
    wait_answers(page, 1)
    live.model.delay_s = 0.05
    send(page, "Second message: a long answer is streaming while I scroll up.")
    wait_streaming(page, 20)
    expect(page.locator("#new-badge")).to_be_hidden()
    page.mouse.move(450, 200)
    page.mouse.wheel(0, -5000)
    page.wait_for_selector("#new-badge", state="visible", timeout=WAIT_MS)
    # The wheel scroll may still be under way when the badge shows. Auto-scroll must pause
    # while the reader is scrolled up: the page stays near the top.
    page.wait_for_function(
        "() => document.getElementById('scroller').scrollTop < 50", timeout=WAIT_MS
    )
    page.click("#new-badge")
    page.wait_for_selector("#new-badge", state="hidden", timeout=WAIT_MS)
    wait_answers(page, 2)
    # Back at the bottom, auto-scroll follows the answer again (rows may still settle
    # their size after the last paint).
    page.wait_for_function(
        "() => { const s = document.getElementById('scroller');"
        " return s.scrollHeight - s.scrollTop - s.clientHeight < 50; }",
        timeout=WAIT_MS,
    )


def test_tool_approval_approve_and_deny(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session()
    page = open_chat(new_page, live, token)
    send(page, "/edit notes.md Written from the browser test.")
    card = page.locator(".approval--pending")
    card.wait_for(timeout=WAIT_MS)
    expect(card.locator(".approval__tool")).to_have_text("edit_file", use_inner_text=True)
    expect(card.locator(".approval__args")).to_contain_text("notes.md", use_inner_text=True)
    expect(card.locator(".approval__countdown")).to_contain_text("left", use_inner_text=True)
    screenshot(page, "chat-approval")
    # Reloaded without the page's local copy (wiped before the app starts), and subscribed
    # after the request's event: the card can only come from the snapshot.
    page.context.add_init_script(
        """for (const key of Object.keys(localStorage)) {
            if (key.startsWith("relayline.history.")) localStorage.removeItem(key);
        }"""
    )
    page.reload()
    wait_online(page)
    card.wait_for(timeout=WAIT_MS)
    expect(card.locator(".approval__tool")).to_have_text("edit_file", use_inner_text=True)
    expect(card.locator(".approval__args")).to_contain_text("notes.md", use_inner_text=True)
    expect(card.locator(".approval__countdown")).to_contain_text("left", use_inner_text=True)
    card.locator("button[data-action=approve]").click()
    page.locator(".approval--approved").wait_for(timeout=WAIT_MS)
    wait_answers(page, 1)
    assert (live.workspace / "notes.md").read_text() == "Written from the browser test."

    send(page, "/run echo hi")
    page.locator(".approval--pending").wait_for(timeout=WAIT_MS)
    page.locator(".approval--pending button[data-action=deny]").click()
    page.locator(".approval--denied").wait_for(timeout=WAIT_MS)
    wait_answers(page, 2)
    assert "declined" in last_answer(page)
    assert page.js_errors == []


def test_debug_overlay_lists_packets(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session()
    page = open_chat(new_page, live, token)
    # Shift+Enter is a new line, Enter sends.
    page.fill("#input", "Hello,")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("packets!")
    expect(page.locator("#input")).to_have_value("Hello,\npackets!")
    expect(page.locator(".msg")).to_have_count(0)
    page.press("#input", "Enter")
    wait_answers(page, 1)
    expect(page.locator("#input")).to_have_value("")
    expect(page.locator("#debug-overlay")).to_have_count(0)
    page.keyboard.press("Control+Shift+D")
    overlay = page.locator("#debug-overlay")
    overlay.wait_for(state="visible", timeout=WAIT_MS)
    cells = overlay.locator("tbody td:nth-child(4)")
    for kind in ("send", "message.delta", "message.completed"):
        expect(cells.filter(has_text=re.compile(f"^{re.escape(kind)}")).first).to_be_attached()
    # Bounded by the overlay's capacity.
    page.wait_for_function(
        """() => {
            const n = document.querySelectorAll('#debug-overlay tbody tr').length;
            return n >= 5 && n <= 200;
        }""",
        timeout=WAIT_MS,
    )
    screenshot(page, "debug-overlay")
    page.keyboard.press("Control+Shift+D")
    overlay.wait_for(state="hidden", timeout=WAIT_MS)
    assert assistant_count(page) == 1


def test_phone_layout_has_a_drawer(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session()
    page = open_chat(new_page, live, token, viewport={"width": 390, "height": 780}, is_mobile=True)
    send(page, "Hi from a phone")
    wait_answers(page, 1)
    # The chat list starts hidden.
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().x < 0",
        timeout=WAIT_MS,
    )
    screenshot(page, "chat-phone")
    page.click("#menu-btn")
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().x >= 0",
        timeout=WAIT_MS,
    )
    expect(page.locator(".chat-item")).to_have_count(1)


def test_two_thousand_messages_stay_responsive(live: LiveRelay, new_page: Any) -> None:
    _, key, _ = live.tenant_session()
    with live.http() as http:
        auth = {"Authorization": f"Bearer {key}"}
        cid = http.post("/v1/chats", json={"title": "Long history"}, headers=auth).json()["id"]
        token = http.post(
            "/v1/sessions", json={"chat_ids": [cid], "can_create_chats": True}, headers=auth
        ).json()["token"]
    live.seed_messages(cid, 2000)
    page = open_chat(new_page, live, token, cid)
    page.wait_for_function("() => relayline.conversation?.order.length >= 100", timeout=WAIT_MS)
    page.wait_for_selector(".msg--assistant", timeout=WAIT_MS)
    # Only the latest messages are in the DOM; the newest is at the bottom, in view.
    expect(page.locator("#messages .msg").last).to_contain_text("Answer 2000.")
    page.wait_for_function(
        """() => {
            const n = document.querySelectorAll('#messages .msg').length;
            return n >= 40 && n <= 120;
        }""",
        timeout=WAIT_MS,
    )
    # A frame stays short while typing and while the list scrolls.
    budget = page.evaluate(
        """async () => {
            const s = document.getElementById('scroller');
            const started = performance.now();
            for (let i = 0; i < 30; i++) {
                s.scrollTop = s.scrollHeight * (i % 2 ? 0.5 : 0.9);
                await new Promise(requestAnimationFrame);
            }
            return (performance.now() - started) / 30;
        }"""
    )
    assert budget < 100, f"{budget:.1f} ms per frame"
    # Scrolling to the top brings in older messages, page by page, in order.
    for _ in range(3):
        page.mouse.move(600, 300)
        page.mouse.wheel(0, -100_000)
        page.wait_for_timeout(300)
    page.wait_for_function(
        "() => document.querySelectorAll('#messages .msg').length > 150", timeout=WAIT_MS
    )
    seqs: list[int] = page.evaluate(
        "() => relayline.conversation.order.map(id => relayline.conversation.get(id).seq)"
    )
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    answers = assistant_count(page)
    send(page, "And one more")
    wait_answers(page, answers + 1, timeout=20_000)
    expect(page.locator("#messages .msg--user").last).to_contain_text("And one more")
    assert page.js_errors == []


def test_stop_button_cancels_the_answer(live: LiveRelay, new_page: Any) -> None:
    _, key, token = live.tenant_session()
    live.model.delay_s = 0.05
    page = open_chat(new_page, live, token)
    send(page, "Write something long that I will stop halfway.")
    cid = chat_id(page)
    wait_streaming(page, 30)
    page.click("#stop")
    page.locator(".msg--assistant[data-status=cancelled]").wait_for(timeout=WAIT_MS)
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator(".msg--assistant .msg__status")).to_contain_text(
        "Stopped", use_inner_text=True
    )
    shown = last_answer(page)
    page.wait_for_timeout(300)
    assert last_answer(page) == shown, "nothing is added after the stop"
    answer = next(m for m in live.messages(key, cid) if m["role"] == "assistant")
    assert answer["status"] == "cancelled"
    assert shown.startswith(answer["content"]) or answer["content"].startswith(shown)


def test_an_answer_cut_at_the_length_limit_says_so(live: LiveRelay, new_page: Any) -> None:
    tenant_id, key, token = live.tenant_session()
    with live.http() as http:
        r = http.put(
            f"/v1/admin/tenants/{tenant_id}/agent",
            json={"model": "local", "tools": TOOLS, "max_tokens": 3},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        r.raise_for_status()
    live.model.delay_s = 0.02
    page = open_chat(new_page, live, token)
    send(page, "How do relays keep a stream going when a tab reloads?")
    cid = chat_id(page)
    answer = page.locator(".msg--assistant").last
    note = answer.locator(".msg__status")
    # Live, from message.completed.
    expect(answer).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
    expect(note).to_have_text("Cut at the length limit", use_inner_text=True)
    stored = [m for m in live.messages(key, cid) if m["role"] == "assistant"]
    assert stored[0]["finish_reason"] == "length"
    assert len(stored[0]["content"].split()) == 3
    expect(answer.locator(".msg__body")).to_have_text(
        stored[0]["content"].strip(), use_inner_text=True
    )
    expect(page.locator(".msg--user .msg__status")).to_have_text("", use_inner_text=True)
    screenshot(page, "chat-cut-at-length")

    # After a reload, and in a fresh browser with no local copy: from the stored message.
    page.reload()
    wait_online(page)
    expect(page.locator(".msg--assistant").last.locator(".msg__status")).to_have_text(
        "Cut at the length limit", use_inner_text=True
    )
    fresh = open_chat(new_page, live, current_token(page), cid, color_scheme="dark")
    expect(fresh.locator(".msg--assistant").last.locator(".msg__status")).to_have_text(
        "Cut at the length limit", use_inner_text=True
    )
    screenshot(fresh, "chat-cut-at-length-dark")

    # An answer the model ends on its own has no note.
    with live.http() as http:
        r = http.put(
            f"/v1/admin/tenants/{tenant_id}/agent",
            json={"model": "local", "tools": TOOLS},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        r.raise_for_status()
    send(page, "And in one more answer, without a limit?")
    wait_answers(page, 2)
    expect(page.locator(".msg--assistant")).to_have_count(2)
    expect(page.locator(".msg--assistant").last.locator(".msg__status")).to_have_text(
        "", use_inner_text=True
    )
    expect(page.locator(".msg--assistant").first.locator(".msg__status")).to_have_text(
        "Cut at the length limit", use_inner_text=True
    )
    assert page.js_errors == [] and fresh.js_errors == []


def test_a_message_sent_before_the_chat_list_arrives_makes_one_chat_and_is_answered(
    live: LiveRelay, new_page: Any
) -> None:
    """Online before its chat list came: what is sent then waits for the page's first opening,
    which would otherwise replace the new chat with an empty draft."""
    _, key, token = live.tenant_session()
    live.model.delay_s = 0.01
    page = new_page()
    held: list[tuple[Any, Any]] = []
    # The list as it is when asked for (no chats yet), handed to the page only later.
    page.route(re.compile(r"/v1/chats\?limit="), lambda route: held.append((route, route.fetch())))
    page.goto(f"{live.url}/#session={token}")
    wait_online(page)
    for _ in range(100):  # bounded: 5 s
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    send(page, "Typed before the page had its chats")
    send(page, "Typed before the page had its chats")  # and Enter twice
    page.wait_for_timeout(300)
    route, response = held.pop()
    route.fulfill(response=response)
    cid = chat_id(page)
    wait_answers(page, 1)
    expect(page.locator("#chat-list [data-chat]")).to_have_count(1)
    expect(page.locator(f'#chat-list [data-chat="{cid}"]')).to_have_attribute(
        "aria-current", "page"
    )
    expect(page.locator("#chat-title")).to_have_text("Typed before the page had its chats")
    expect(page.locator("#input")).to_have_value("")
    expect(page.locator(".msg--user")).to_have_count(1)
    assert [c["id"] for c in live.chats(key)] == [cid]
    stored = live.messages(key, cid)
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert page.js_errors == []
