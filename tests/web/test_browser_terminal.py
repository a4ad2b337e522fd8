"""The terminal view in Chromium against a real relay and a real worker started with terminals
(an allowlisted bash): typing and reading the screen, the window's size reaching the PTY, a
reload that shows the screen as it was, the disconnected state while the relay is away, and
what was typed meanwhile arriving once."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import SettingsFactory
from tests.web.chatpage import WAIT_MS, current_token, wait_online
from tests.web.conftest import LiveRelay, screenshot

# bash without start-up files and with a prompt of its own, so what the screen shows is known.
BASH = "/bin/bash"
PROGRAMS = f"shell=/usr/bin/env PS1={shlex.quote('term$ ')} {BASH} --noprofile --norc -i"


@pytest.fixture
def live_terminals(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[LiveRelay]:
    """A relay and a worker that hosts terminals (``shell``: bash)."""
    relay = LiveRelay(make_settings, tmp_path, delay_s=0.004)
    relay.worker_settings = relay.worker_settings.model_copy(
        update={"terminals": True, "terminal_programs": PROGRAMS}
    )
    try:
        relay.start_relay()
        relay.start_worker()
        yield relay
    finally:
        relay.close()


def terminal_token(live: LiveRelay) -> str:
    """A session token of a new tenant that may create chats and open terminals."""
    _, key, _ = live.tenant_session()
    with live.http() as http:
        r = http.post(
            "/v1/sessions",
            json={"can_create_chats": True, "terminals": "write", "ttl_s": 3600},
            headers={"Authorization": f"Bearer {key}"},
        )
        r.raise_for_status()
        token: str = r.json()["token"]
        return token


def open_page(new_page: Any, live: LiveRelay, token: str, **options: Any) -> Any:
    page = new_page(**options)
    page.goto(f"{live.url}/#session={token}")
    wait_online(page)
    return page


VIEW_STATE = """() => {
    const v = relayline.terminals.view;
    return v && {id: v.id, state: v.state, following: v.following, awaiting: v.awaitingSnapshot,
        painted: v.painted, queued: v.queue.size, link: relayline.socket.state,
        topics: [...relayline.socket.topics.keys()]};
}"""


def open_shell(page: Any) -> None:
    page.locator("#term-new").click()
    page.locator("#term-menu [data-program=shell]").click()
    expect(page.locator("#term-panel")).to_be_visible()
    try:
        expect(rows(page)).to_contain_text("term$", timeout=WAIT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe view: {page.evaluate(VIEW_STATE)}") from None


def type_line(page: Any, text: str) -> None:
    page.locator("#term-screen .xterm-helper-textarea").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def rows(page: Any) -> Any:
    return page.locator("#term-screen .xterm-rows")


def terminal_id(page: Any) -> str:
    value: str = page.wait_for_function(
        "() => globalThis.relayline?.terminals.view?.id", timeout=WAIT_MS
    ).json_value()
    return value


def shrink_window(page: Any) -> tuple[int, int]:
    """A smaller window; returns the terminal's (cols, rows) once its one term.resize went."""
    page.set_viewport_size({"width": 1000, "height": 640})
    page.wait_for_function(
        """() => {
            const v = relayline.terminals.view;
            const last = v?.resizer.last;
            return Boolean(last && last.cols === v.term.cols && last.rows === v.term.rows
                && v.term.cols < 110);
        }""",
        timeout=WAIT_MS,
    )
    cols, lines = page.evaluate(
        "() => [relayline.terminals.view.term.cols, relayline.terminals.view.term.rows]"
    )
    return cols, lines


def test_type_read_reload_and_resize(live_terminals: LiveRelay, new_page: Any) -> None:
    live = live_terminals
    token = terminal_token(live)
    page = open_page(new_page, live, token)
    expect(page.locator("#term-nav")).to_be_visible()
    open_shell(page)
    term_id = terminal_id(page)
    assert re.search(f"#term={term_id}$", page.url)

    type_line(page, "echo answer-$((6*7))")
    expect(rows(page)).to_contain_text("answer-42", timeout=WAIT_MS)

    # After a reload the page reattaches: the same terminal, the screen as it was.
    page.reload()
    wait_online(page)
    expect(page.locator("#term-panel")).to_be_visible()
    expect(rows(page)).to_contain_text("answer-42", timeout=WAIT_MS)
    assert terminal_id(page) == term_id
    remembered = page.evaluate("() => JSON.parse(localStorage.getItem('relayline.terminals'))")
    assert [e["id"] for e in remembered] == [term_id]
    type_line(page, "echo after-$((1+1))")
    expect(rows(page)).to_contain_text("after-2", timeout=WAIT_MS)
    type_line(
        page,
        "ls -l --color=always /usr/lib/python3*/json; "
        "printf '\\e[1;32mdone\\e[0m \\e[38;2;255;128;0min 24-bit colour\\e[0m\\n'",
    )
    expect(rows(page)).to_contain_text("decoder.py", timeout=WAIT_MS)
    expect(rows(page)).to_contain_text("in 24-bit colour", timeout=WAIT_MS)
    # xterm's run-time styles apply under the page's style-src 'self': a palette colour (a
    # class its theme stylesheet defines) and a 24-bit one (a style attribute on the cell).
    # (The command line holds the same words in one plain span, so the match is exact.)
    cells = page.locator("#term-screen .xterm-rows span")
    expect(cells.filter(has_text=re.compile(r"^done$"))).to_have_css("color", "rgb(138, 226, 52)")
    expect(cells.filter(has_text=re.compile(r"^in 24-bit colour$"))).to_have_css(
        "color", "rgb(255, 128, 0)"
    )
    screenshot(page, "terminal-light")

    # Another page of the same session lists the terminal and shows the same screen.
    dark = open_page(new_page, live, current_token(page), color_scheme="dark")
    dark.locator(f"#term-list [data-term='{term_id}']").click()
    expect(dark.locator("#term-screen .xterm-rows")).to_contain_text("after-2", timeout=WAIT_MS)
    expect(dark.locator("#term-screen .xterm-rows")).to_contain_text(
        "in 24-bit colour", timeout=WAIT_MS
    )
    screenshot(dark, "terminal-dark")
    assert dark.js_errors == []
    # The other window goes: with two writers on one terminal the PTY takes the size of
    # whichever resized last, and the next step checks this window's own.
    dark.close()

    # A smaller window: one term.resize once it settles, and the PTY has the new size.
    cols, lines = shrink_window(page)
    # The worker applies a resize once it settles (its own debounce): ask until the PTY says so.
    for _ in range(20):
        type_line(page, "stty size")
        try:
            expect(rows(page)).to_contain_text(f"{lines} {cols}", timeout=1000)
            break
        except AssertionError:
            continue
    expect(rows(page)).to_contain_text(f"{lines} {cols}", timeout=WAIT_MS)
    assert page.js_errors == []


def test_a_reload_after_the_window_shrank_shows_the_whole_screen(
    live_terminals: LiveRelay, new_page: Any
) -> None:
    live = live_terminals
    page = open_page(new_page, live, terminal_token(live))
    open_shell(page)
    type_line(page, "echo answer-$((6*7))")
    expect(rows(page)).to_contain_text("answer-42", timeout=WAIT_MS)
    shrink_window(page)
    page.reload()
    wait_online(page)
    expect(rows(page)).to_contain_text("term$", timeout=WAIT_MS)
    expect(rows(page)).to_contain_text("answer-42", timeout=5_000)


def test_disconnected_state_and_input_typed_offline(
    live_terminals: LiveRelay, new_page: Any
) -> None:
    live = live_terminals
    token = terminal_token(live)
    page = open_page(new_page, live, token)
    open_shell(page)
    type_line(page, "echo before-$((3*3))")
    expect(rows(page)).to_contain_text("before-9", timeout=WAIT_MS)

    live.stop_relay()
    banner = page.locator("#term-banner")
    expect(banner).to_be_visible(timeout=WAIT_MS)
    expect(banner).to_contain_text("Disconnected")
    expect(page.locator("#term-panel")).to_have_attribute("data-link", "offline")
    type_line(page, "echo offline-$((40+2))")
    expect(banner).to_contain_text("23 bytes typed, waiting to be sent")
    screenshot(page, "terminal-offline")
    # Past 64 KiB the oldest input goes, and the page says so: a long paste of x pushes the
    # line above out; Ctrl-U then clears what is left of the x before the command.
    page.evaluate("() => relayline.terminals.view.input('x'.repeat(70000))")
    notice = page.locator(".notice", has_text="Too much typed while offline")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("the oldest 4.4 KB of it was dropped")
    page.locator("#term-screen .xterm-helper-textarea").focus()
    page.keyboard.press("Control+U")
    type_line(page, "echo offline-$((40+2))")
    expect(banner).to_contain_text("65536 bytes typed, waiting to be sent")

    live.start_relay()
    wait_online(page, timeout=20_000)
    expect(banner).to_be_hidden(timeout=WAIT_MS)
    expect(rows(page)).to_contain_text("offline-42", timeout=20_000)
    # Sent once: the command ran once, its output is on the screen once.
    text = page.evaluate("() => relayline.terminals.view.screenText()")
    assert text.count("offline-42") == 1  # the command line shows $((40+2)), not its value
    assert page.js_errors == []


def test_relay_back_before_the_worker(live_terminals: LiveRelay, new_page: Any) -> None:
    """A restarted relay learns a terminal only when its worker is back: until then the page
    says the worker is away and keeps what is typed, then follows the terminal again."""
    live = live_terminals
    page = open_page(new_page, live, terminal_token(live))
    open_shell(page)
    type_line(page, "echo before-$((5*5))")
    expect(rows(page)).to_contain_text("before-25", timeout=WAIT_MS)

    # The relay comes back refusing the worker's key for a while (so the page is surely back
    # first), then knows it again.
    keys = live.settings.worker_keys
    live.stop_relay()
    live.settings = live.settings.model_copy(update={"worker_keys": ["other:" + "s" * 32]})
    live.start_relay()
    wait_online(page, timeout=20_000)
    banner = page.locator("#term-banner")
    expect(banner).to_contain_text("worker running this terminal is away", timeout=WAIT_MS)
    # A reload meanwhile (the relay answers 404 for the terminal): still remembered, still
    # waiting for it.
    term_id = terminal_id(page)
    page.reload()
    wait_online(page)
    expect(banner).to_contain_text("worker running this terminal is away", timeout=WAIT_MS)
    expect(page.locator(f"#term-list [data-term='{term_id}']")).to_contain_text("worker away")
    type_line(page, "echo back-$((50+5))")
    expect(banner).to_contain_text("typed, waiting to be sent")
    screenshot(page, "terminal-worker-away")

    live.stop_relay()
    live.settings = live.settings.model_copy(update={"worker_keys": keys})
    live.start_relay()
    expect(rows(page)).to_contain_text("back-55", timeout=30_000)
    expect(banner).to_be_hidden()
    text = page.evaluate("() => relayline.terminals.view.screenText()")
    assert text.count("back-55") == 1
    assert page.js_errors == []


def test_program_menu_phone_layout_and_how_a_session_ended(
    live_terminals: LiveRelay, new_page: Any
) -> None:
    live = live_terminals
    page = open_page(new_page, live, terminal_token(live), viewport={"width": 390, "height": 844})
    page.locator("#menu-btn").click()
    page.locator("#term-new").click()
    expect(page.locator("#term-menu [data-program=shell]")).to_be_visible()
    screenshot(page, "terminal-menu-phone")
    page.locator("#term-menu [data-program=shell]").click()
    expect(page.locator("#term-panel")).to_be_visible()
    expect(rows(page)).to_contain_text("term$", timeout=WAIT_MS)
    type_line(page, "echo phone-$((2*21))")
    expect(rows(page)).to_contain_text("phone-42", timeout=WAIT_MS)
    screenshot(page, "terminal-phone")

    type_line(page, "exit 3")
    banner = page.locator("#term-banner")
    expect(banner).to_contain_text("exited with status 3", timeout=WAIT_MS)
    expect(page.locator("#term-end")).to_be_hidden()
    expect(page.locator("#term-meta")).to_have_attribute("data-state", "exited")
    page.locator("#term-close").click()
    expect(page.locator("#term-panel")).to_be_hidden()
    expect(page.locator("#composer")).to_be_visible()
    assert page.js_errors == []
