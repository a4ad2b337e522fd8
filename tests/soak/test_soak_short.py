"""The soak's short version (bench/soak.py runs ten minutes by default): clients on several
chats, workers stopped and killed now and then; nothing lost, doubled or stuck, and the relay's
file descriptors, event-loop tasks and store connections flat after the warm-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_short_soak_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            *("--duration", "24", "--clients", "6", "--chats", "3"),
            *("--restart-every", "6", "--pause", "0.5", "--json", str(out)),
        ],
        capture_output=True,
        timeout=170,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    result = json.loads(out.read_text())
    assert (result["lost"], result["doubled"], result["stuck"]) == ([], [], [])
    assert result["worker_restarts"] >= 2
    assert result["answers"] >= 10
    gauges = result["gauges"]
    # After the warm-up nothing that leaks per turn or per reconnect may grow.
    assert gauges["open_fds"]["last"] <= gauges["open_fds"]["first"] + 4, gauges
    assert gauges["tasks"]["last"] <= gauges["tasks"]["first"] + 8, gauges
    assert gauges["store_connections"]["max"] <= 5, gauges
    assert gauges["sockets"]["last"] == 6, gauges
