"""The chat page through a relay restart: it reconnects, resumes the answer, and a message
typed while the relay was down is delivered exactly once."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.web.chatpage import (
    WAIT_MS,
    chat_id,
    last_answer,
    open_chat,
    send,
    wait_answers,
    wait_online,
    wait_streaming,
)
from tests.web.conftest import LiveRelay

OFFLINE_TEXT = "Typed while the relay was down."


def test_relay_restart_mid_answer_and_offline_message(live: LiveRelay, new_page: Any) -> None:
    _, key, token = live.tenant_session()
    live.model.delay_s = 0.04
    page = open_chat(new_page, live, token)
    send(page, "Please write a long answer so that the relay can restart in the middle of it.")
    cid = chat_id(page)
    wait_streaming(page, 60)

    live.stop_relay()
    page.wait_for_function(
        "() => ['reconnecting', 'offline'].includes(document.getElementById('conn').dataset.state)",
        timeout=WAIT_MS,
    )
    expect(page.locator("#conn")).to_have_text(
        re.compile("Reconnecting|Offline"), use_inner_text=True
    )
    send(page, OFFLINE_TEXT)
    page.locator(".msg--user[data-status=queued]").wait_for(timeout=WAIT_MS)
    expect(page.locator(".msg--user[data-status=queued] .chip")).to_have_text(
        re.compile("^Waiting"), use_inner_text=True
    )

    live.start_relay()
    wait_online(page, timeout=20_000)
    # A restarted relay starts a new event log: the page is told it missed events and
    # reloads the conversation instead of guessing.
    page.locator(".notice", has_text="reloaded").wait_for(timeout=WAIT_MS)
    wait_answers(page, 2, timeout=30_000)

    stored = live.messages(key, cid)
    users = [m for m in stored if m["role"] == "user"]
    answers = [m for m in stored if m["role"] == "assistant"]
    assert [m["content"] for m in users].count(OFFLINE_TEXT) == 1
    assert len(users) == 2 and len(answers) == 2
    assert all(m["status"] == "complete" for m in answers)
    # The page shows exactly what the relay stored, each message once.
    shown: list[str] = page.evaluate(
        "() => relayline.conversation.order.map(id => relayline.conversation.get(id).content)"
    )
    assert shown == [m["content"] for m in stored]
    assert last_answer(page) == answers[-1]["content"]
    expect(page.locator(".msg")).to_have_count(4)
    assert page.js_errors == []


def test_offline_queue_survives_a_reload(live: LiveRelay, new_page: Any) -> None:
    _, key, token = live.tenant_session()
    page = open_chat(new_page, live, token)
    send(page, "hello")
    cid = chat_id(page)
    wait_answers(page, 1)
    live.stop_relay()
    page.wait_for_function(
        "() => document.getElementById('conn').dataset.state !== 'online'", timeout=WAIT_MS
    )
    send(page, OFFLINE_TEXT)
    page.locator(".msg--user[data-status=queued]").wait_for(timeout=WAIT_MS)
    live.start_relay()
    page.reload()
    wait_online(page, timeout=20_000)
    wait_answers(page, 2, timeout=30_000)
    contents = [m["content"] for m in live.messages(key, cid) if m["role"] == "user"]
    assert contents == ["hello", OFFLINE_TEXT]


def test_no_worker_is_explained_and_the_answer_follows(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session()
    live.stop_worker()
    page = open_chat(new_page, live, token)
    send(page, "Is anyone there?")
    notice = page.locator(".notice", has_text="No agent is online")
    notice.wait_for(timeout=WAIT_MS)
    expect(page.locator("#typing")).to_be_visible()
    live.start_worker()
    wait_answers(page, 1, timeout=20_000)
    notice.wait_for(state="detached", timeout=WAIT_MS)
