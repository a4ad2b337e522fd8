"""The worker keeps the memory it frees (relayline.worker.malloc): blocks freed and allocated
again cost no page faults, where glibc's defaults give the heap back and fault it in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's; this C library is not"
)

# Eight blocks of 400 KB (each over glibc's first mmap threshold, together over its trim
# threshold), all freed, twenty times over; prints the page faults of the last fifteen rounds.
ROUNDS = """
import resource, sys
from relayline.worker.malloc import keep_freed_memory
print(keep_freed_memory())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_():
    blocks = [bytearray(400_000) for _ in range(8)]
    del blocks
for _ in range(5):
    round_()
before = faults()
for _ in range(15):
    round_()
print(faults() - before)
"""


def run(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS],
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_blocks_come_back_without_page_faults() -> None:
    kept, faults = run({})
    assert kept == "True"
    assert faults < 200  # 15 rounds of 3.2 MB: about 11,700 pages if the heap were given back


def test_glibcs_defaults_give_the_heap_back_which_is_what_this_avoids() -> None:
    # The same rounds with the operator's own choice in the environment: left alone (here,
    # glibc's default trim threshold), and the pages fault in again every round.
    kept, faults = run({"MALLOC_TRIM_THRESHOLD_": str(128 * 1024)})
    assert kept == "False"
    assert faults > 5_000
