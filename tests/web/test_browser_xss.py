"""Hostile text through a real stream: the local model echoes the user's message (quoted and
inside a code block), so every payload reaches the page both as a user message and inside a
streamed answer. Nothing may run, and no handler or script URL may reach the DOM."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.web.chatpage import open_chat, send, wait_answers
from tests.web.conftest import LiveRelay

PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<img src=x onerror=\"window.__xss='img'\">",
    "<script>alert(1)</script><script>window.__xss='script'</script>",
    "[click me](javascript:alert(1)) and [me too](javascript:window.__xss='md-link')",
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)><svg/onload=\"window.__xss='svg'\">",
    '![pic](javascript:alert(1)) <iframe src="javascript:alert(1)"></iframe>',
    "<details open ontoggle=\"window.__xss='toggle'\">x</details>",
    '<a href="&#106;avascript:alert(1)">entity</a>',
    '<form action="javascript:alert(1)"><button>go</button></form>',
]

DOM_CHECK = """() => {
    const bad = [];
    for (const el of document.querySelectorAll('*')) {
        for (const attr of el.attributes) {
            const name = attr.name.toLowerCase();
            const value = attr.value.replace(/[\\s\\u0000-\\u001f]/g, '').toLowerCase();
            if (name.startsWith('on')) bad.push(`${el.tagName} ${name}`);
            if (['href', 'src', 'action', 'formaction', 'xlink:href'].includes(name)
                && value.startsWith('javascript:')) bad.push(`${el.tagName} ${name}=${value}`);
        }
    }
    const thread = document.getElementById('messages');
    for (const tag of ['script', 'iframe', 'img', 'form', 'details', 'object', 'embed']) {
        if (thread.querySelector(tag)) bad.push(`<${tag}> in the thread`);
    }
    for (const svg of thread.querySelectorAll('svg')) {
        if (svg.getAttribute('aria-hidden') !== 'true') bad.push('foreign <svg> in the thread');
    }
    return bad;
}"""


def test_xss_payloads_never_execute(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session()
    page = new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.add_init_script("window.__xss = null;")
    page = open_chat(lambda **_: page, live, token)
    for count, payload in enumerate(PAYLOADS, start=1):
        send(page, payload)
        wait_answers(page, count)
    page.wait_for_timeout(300)  # let any deferred handler (image error, svg load) fire
    assert dialogs == []
    assert page.evaluate("() => window.__xss") is None
    assert page.evaluate(DOM_CHECK) == []
    # Shown as text, not swallowed: people see what they (or the model) wrote.
    expect(page.locator(".msg--user .msg__body").first).to_contain_text(
        "<img src=x onerror=alert(1)>"
    )
    links = page.locator("#messages a").evaluate_all(
        "els => els.map(a => [a.getAttribute('href'), a.target, a.rel])"
    )
    for href, target, rel in links:
        assert href is None or href.startswith(("http:", "https:", "mailto:")), href
        if href:
            assert (target, rel) == ("_blank", "noopener noreferrer")
    assert page.js_errors == []


def test_markdown_links_open_safely(live: LiveRelay, new_page: Any) -> None:
    _, _, token = live.tenant_session()
    page = open_chat(new_page, live, token)
    send(page, "See [the docs](https://example.org/docs) please.")
    wait_answers(page, 1)
    link = page.locator(".msg--user a").first
    expect(link).to_have_attribute("href", "https://example.org/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
