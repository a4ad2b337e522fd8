"""Open tool-approval requests as a chat snapshot lists them: only those that can still be
decided, oldest first, bounded in size, and copied to a shared coordinator on every change."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

from relayline.turns.approvals import Approvals, fit_arguments, still_open
from relayline.turns.context import TurnContext
from relayline.turns.coordination import LocalCoordinator
from relayline.turns.running import Running, RunningTurns
from relayline.turns.worker_link import WorkerLink
from tests.conftest import SettingsFactory


class Recorder:
    """Stands for the bus and for a shared coordinator: records what reaches each, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.stored: dict[str, list[dict[str, Any]]] = {}

    async def publish(self, topic: str, type: str, data: dict[str, Any]) -> None:
        self.log.append(("publish", (type, data["approval_id"])))

    async def set_approvals(self, chat_id: str, items: list[dict[str, Any]]) -> None:
        self.log.append(("shared", [i["approval_id"] for i in items]))
        self.stored[chat_id] = items


class SharedCoordinator(LocalCoordinator):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.shared = True
        self.recorder = recorder

    async def set_approvals(self, chat_id: str, items: list[dict[str, Any]]) -> None:
        await self.recorder.set_approvals(chat_id, items)


def make(
    make_settings: SettingsFactory, *, shared: bool = False, **settings: Any
) -> tuple[Approvals, Recorder]:
    recorder = Recorder()
    coordinator = SharedCoordinator(recorder) if shared else LocalCoordinator()
    ctx = TurnContext(make_settings(**settings), cast(Any, None), cast(Any, recorder), coordinator)
    return Approvals(ctx, RunningTurns()), recorder


def running(chat_id: str, turn_id: str = "turn-1") -> Running:
    async def nothing(*_: Any) -> None:
        return None

    worker = WorkerLink("w", "k", 1, nothing, nothing)
    now = time.monotonic()
    return Running(turn_id, chat_id, "tenant", 1, "msg", worker, now + 30, now, "corr")


def ask(approval_id: str, deadline: int | None = None, arguments: Any = None) -> dict[str, Any]:
    return {
        "type": "tool.approval_request",
        "approval_id": approval_id,
        "tool": "edit_file",
        "arguments": {"path": f"{approval_id}.md"} if arguments is None else arguments,
        "deadline": deadline,
    }


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["approval_id"] for i in items]


async def test_only_requests_whose_deadline_has_not_passed_are_open(
    make_settings: SettingsFactory,
) -> None:
    approvals, _ = make(make_settings, approval_timeout_s=60)
    here, other = running("chat-a"), running("chat-b", "turn-2")
    now = int(time.time() * 1000)
    await approvals.request(here, ask("late", now - 1000))
    await approvals.request(here, ask("soon", now + 500))
    await approvals.request(here, ask("later", now + 30_000))
    await approvals.request(other, ask("elsewhere", now + 30_000))
    assert ids(approvals.open_for("chat-a")) == ["soon", "later"]
    assert approvals.open_for("chat-a")[1] == {
        "approval_id": "later",
        "turn_id": "turn-1",
        "tool": "edit_file",
        "arguments": {"path": "later.md"},
        "deadline": now + 30_000,
    }
    # "soon" expires by itself: a bounded poll, not a guess at how long that takes.
    async with asyncio.timeout(5):
        while ids(approvals.open_for("chat-a")) != ["later"]:
            await asyncio.sleep(0.05)
    # The relay's own timeout caps what the worker asked for.
    await approvals.request(here, ask("patient", now + 10**9))
    (patient,) = [i for i in approvals.open_for("chat-a") if i["approval_id"] == "patient"]
    assert patient["deadline"] <= int(time.time() * 1000) + 60_000
    approvals.forget(here)
    assert approvals.open_for("chat-a") == []
    assert ids(approvals.open_for("chat-b")) == ["elsewhere"]


def test_a_shared_copy_keeps_only_well_formed_requests_still_open() -> None:
    now = int(time.time() * 1000)
    good = {"approval_id": "a", "turn_id": "t", "tool": "x", "arguments": {}}
    good["deadline"] = now + 5000
    copy = [
        {**good, "approval_id": "expired", "deadline": now - 1},
        good,
        {**good, "approval_id": "no-deadline", "deadline": None},
        {**good, "approval_id": 7},
        {**good, "approval_id": "b", "arguments": None},
    ]
    assert ids(still_open(copy)) == ["a", "b"]


def test_arguments_are_fitted_into_the_budget_fairly() -> None:
    def item(name: str, arguments: Any) -> dict[str, Any]:
        return {"approval_id": name, "arguments": arguments}

    small = {"path": "a.md"}
    big = {"path": "b.md", "content": "x" * 5000}
    items = [item("small", small), item("big", big), item("none", None)]
    assert fit_arguments(items, 100_000) == items
    fitted = fit_arguments(items, 1000)
    assert fitted[0] == items[0] and fitted[2] == items[2]
    cut = fitted[1]["arguments"]
    assert isinstance(cut, str) and cut.endswith("…")
    assert cut[:-1] == json.dumps(big)[: len(cut) - 1]
    # The big one gets what the small ones leave of the budget, no more.
    used = sum(len(json.dumps(i["arguments"])) for i in (fitted[0], fitted[2])) + len(cut) - 1
    assert 900 < used <= 1000
    # Two big ones share it evenly.
    halves = fit_arguments([item("one", big), item("two", big)], 1000)
    assert [len(h["arguments"]) for h in halves] == [501, 501]
    assert fit_arguments([], 10) == []


async def test_the_shared_copy_changes_before_each_announcement(
    make_settings: SettingsFactory,
) -> None:
    approvals, recorder = make(make_settings, shared=True)
    here = running("chat-a")
    deadline = int(time.time() * 1000) + 30_000
    await approvals.request(here, ask("one", deadline))
    await approvals.request(here, ask("two", deadline))
    assert await approvals.resolve("chat-a", "one", approve=True)
    assert recorder.log == [
        ("shared", ["one"]),
        ("publish", ("tool.approval_requested", "one")),
        ("shared", ["one", "two"]),
        ("publish", ("tool.approval_requested", "two")),
        ("shared", ["two"]),
        ("publish", ("tool.approval_resolved", "one")),
    ]
    assert recorder.stored["chat-a"] == approvals.open_for("chat-a")
    approvals.forget(here)
    await asyncio.sleep(0.05)  # the copy is dropped in the background
    assert recorder.stored["chat-a"] == []
    assert approvals._writes == {}
