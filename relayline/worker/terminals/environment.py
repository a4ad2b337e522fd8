"""What a terminal program starts with: a scrubbed environment and a confined directory.

The environment is the worker's own, less everything that could carry one of its secrets:
every ``RELAYLINE_*`` variable, and any variable whose name contains ``KEY``, ``SECRET``,
``TOKEN``, ``PASSWORD``, ``PASSWD`` or ``CREDENTIAL`` (any case). ``TERM`` is
``xterm-256color`` (the browser's view is xterm.js), ``COLORTERM`` ``truecolor``.

The working directory is the first workspace root unless the opener asks for another, which
must resolve (symlinks followed) inside one of the roots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


class CwdNotAllowed(ValueError):
    """The requested working directory is outside the workspace roots (or not a directory)."""


def terminal_env(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a terminal program (from ``source``, default ``os.environ``)."""
    env = {
        name: value
        for name, value in (os.environ if source is None else source).items()
        if not name.upper().startswith("RELAYLINE_") and not _SECRET_NAME.search(name)
    }
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["TERM"] = "xterm-256color"
    env["COLORTERM"] = "truecolor"
    return env


def resolve_cwd(roots: Sequence[Path], requested: str | None) -> Path:
    """The directory a program starts in: ``requested`` (relative to the first root) when it
    is a directory inside a root, the first root when nothing is asked; else
    :class:`CwdNotAllowed`."""
    if not roots:
        raise CwdNotAllowed("the worker has no workspace root")
    resolved_roots = [Path(root).resolve() for root in roots]
    if not requested:
        return resolved_roots[0]
    if "\x00" in requested or len(requested) > 4096:
        raise CwdNotAllowed("cwd: not a path")
    candidate = Path(requested)
    if not candidate.is_absolute():
        candidate = resolved_roots[0] / candidate
    try:
        target = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise CwdNotAllowed("cwd: no such directory") from None
    if not any(target == root or target.is_relative_to(root) for root in resolved_roots):
        raise CwdNotAllowed("cwd: outside the workspace roots")
    if not target.is_dir():
        raise CwdNotAllowed("cwd: not a directory")
    return target
