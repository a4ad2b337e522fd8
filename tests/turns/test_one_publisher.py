"""A conversation's events leave from one module: relayline.turns.events is the only place in
the relay that names them, so every event of a type has one shape."""

from __future__ import annotations

import ast
from pathlib import Path

import relayline
from relayline.protocol.names import EventType

PACKAGE = Path(relayline.__file__).resolve().parent
PUBLISHER = PACKAGE / "turns" / "events.py"
# The publisher, the protocol's catalogue and frame shapes (a worker frame shares a name with
# an event), and the worker, the Python client and the OpenAI-compatible gateway (they never
# publish: the client and the gateway read the events the relay sends).
ALLOWED = {PUBLISHER, PACKAGE / "protocol" / "names.py", PACKAGE / "protocol" / "frames.py"}
OUTSIDE_THE_RELAY = ("worker", "client", "completions")
CHAT_EVENTS = {
    t.value
    for t in EventType
    if t.value.split(".")[0] in ("message", "turn", "tool", "worker")
    and t is not EventType.EVENTS_MISSED
}
MEMBERS = {t.name for t in EventType if t.value in CHAT_EVENTS}


def offenders() -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path in ALLOWED or path.relative_to(PACKAGE).parts[0] in OUTSIDE_THE_RELAY:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            named = isinstance(node, ast.Constant) and node.value in CHAT_EVENTS
            if named and id(node) not in docstrings:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in MEMBERS
                and isinstance(node.value, ast.Name)
                and node.value.id == "EventType"
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} EventType.{node.attr}")
    return found


def test_only_the_publisher_names_a_conversations_events() -> None:
    assert {"message.delta", "turn.failed", "tool.approval_requested"} <= CHAT_EVENTS
    assert offenders() == []


def test_the_check_finds_an_event_named_elsewhere() -> None:
    stray = PACKAGE / "turns" / "_stray_for_test.py"
    stray.write_text('async def f(bus):\n    await bus.publish("chat:x", "turn.failed", {})\n')
    try:
        assert any("_stray_for_test.py" in line for line in offenders())
    finally:
        stray.unlink()
