"""Helpers for driving the chat page in the browser tests: every wait is bounded."""

from __future__ import annotations

from typing import Any

from tests.web.conftest import LiveRelay

WAIT_MS = 15_000


def open_chat(
    new_page: Any, live: LiveRelay, token: str, chat_id: str | None = None, **options: Any
) -> Any:
    page = new_page(**options)
    fragment = f"session={token}" + (f"&chat={chat_id}" if chat_id else "")
    page.goto(f"{live.url}/#{fragment}")
    wait_online(page)
    return page


def wait_online(page: Any, timeout: int = WAIT_MS) -> None:
    page.wait_for_function(
        "() => document.getElementById('conn')?.dataset.state === 'online'", timeout=timeout
    )


def send(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def chat_id(page: Any) -> str:
    value: str = page.wait_for_function(
        "() => globalThis.relayline?.conversation?.chatId", timeout=WAIT_MS
    ).json_value()
    return value


def assistant_count(page: Any, status: str = "complete") -> int:
    count: int = page.evaluate(
        """status => [...(relayline.conversation?.messages.values() ?? [])]
            .filter(m => m.role === 'assistant' && m.status === status).length""",
        status,
    )
    return count


def wait_answers(page: Any, count: int, timeout: int = WAIT_MS) -> None:
    """Until ``count`` answers are complete, nothing is streaming and the DOM caught up."""
    page.wait_for_function(
        """n => {
            const c = relayline.conversation;
            if (!c || c.activeTurn) return false;
            const done = c.order.map(id => c.get(id)).filter(
                m => m.role === 'assistant' && m.status === 'complete');
            const last = done.at(-1);
            const painted = last && document.querySelector(
                `.msg[data-id="${last.id}"][data-status="complete"]`);
            return done.length >= n && Boolean(painted);
        }""",
        arg=count,
        timeout=timeout,
    )


def current_token(page: Any) -> str:
    """The page's session token: creating a chat gives the page a new one that covers it."""
    token: str = page.evaluate("() => relayline.token")
    return token


def streaming_text(page: Any) -> str:
    text: str = page.evaluate(
        """() => {
            const c = relayline.conversation;
            const id = c?.activeTurn?.message_id;
            return (id && c.get(id)?.content) || '';
        }"""
    )
    return text


def wait_streaming(page: Any, min_chars: int, timeout: int = WAIT_MS) -> None:
    page.wait_for_function(
        """n => {
            const c = relayline.conversation;
            const id = c?.activeTurn?.message_id;
            return Boolean(id && (c.get(id)?.content.length ?? 0) >= n);
        }""",
        arg=min_chars,
        timeout=timeout,
    )


def last_answer(page: Any) -> str:
    text: str = page.evaluate(
        """() => {
            const c = relayline.conversation;
            const answers = c.order.map(id => c.get(id)).filter(m => m.role === 'assistant');
            return answers.at(-1)?.content ?? '';
        }"""
    )
    return text
