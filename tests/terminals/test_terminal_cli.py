"""``relayline worker --terminals`` refuses, at start, what it could not run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import relayline

SOURCE_ROOT = str(Path(relayline.__file__).resolve().parents[1])


def run_worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayline", "worker", "--terminals"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "PYTHONPATH": SOURCE_ROOT,
            "RELAYLINE_WORKER_KEY_ID": "k",
            "RELAYLINE_WORKER_SECRET": "s" * 32,
            **env,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("programs", "message"),
    [
        ("", "needs RELAYLINE_TERMINAL_PROGRAMS"),
        ("shell", "'shell' is not name=command"),
        ("a=/bin/sh -c 'unclosed", "No closing quotation"),
    ],
)
def test_a_worker_without_a_usable_allowlist_does_not_start(
    tmp_path: Path, programs: str, message: str
) -> None:
    done = run_worker(tmp_path, RELAYLINE_TERMINAL_PROGRAMS=programs)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.startswith("fatal:")
