"""``relayline worker`` runs on uvloop when it is installed, on asyncio's own loop otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from relayline.worker.daemon import run_loop


def _loop_module() -> str:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_loop(main())
    assert len(seen) == 1
    return seen[0]


def test_the_worker_runs_on_uvloop_when_it_is_installed() -> None:
    pytest.importorskip("uvloop", reason="uvloop comes with the relay's server extra")
    assert _loop_module().startswith("uvloop")


def test_without_uvloop_the_worker_runs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert _loop_module().startswith("asyncio")
