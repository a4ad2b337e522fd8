"""The C allocator's thresholds: memory the worker frees is kept for its next frames, not handed
back to the kernel and faulted in again a page at a time.

glibc's ``malloc`` gives the top of its heap back to the kernel once more than
``M_TRIM_THRESHOLD`` is free there, and serves a block over ``M_MMAP_THRESHOLD`` with a mapping
of its own, unmapped on free (128 KiB each by default, both raised as it goes). A terminal
program that floods its output passes through the worker in pieces of tens to hundreds of KB
(PTY reads, frames, the screen mirror's batches), each freed a moment later: the heap shrank
and grew again for each, and every page of it came back as a page fault (about a thousand per
MiB of output, a fifth to a quarter of the worker's CPU per MiB; docs/benchmarks.md, Terminals).
With the thresholds below, the same run takes no page faults after its first frames.

The cost: up to :data:`TRIM_THRESHOLD` bytes of freed memory stay with the process, and a
block of up to :data:`MMAP_THRESHOLD` comes from the heap.

Only glibc is set (``gnu_get_libc_version`` is its own); other C libraries, and an operator's
own choice in the environment (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``GLIBC_TUNABLES``), are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 8 * 1024 * 1024
MMAP_THRESHOLD = 1024 * 1024
_OPERATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set the thresholds of the module docstring; whether they were set."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
