"""Workspace confinement for the built-in tools: paths, size caps and a command blocklist.

Paths: relative paths are taken from the first root; any ``..`` component is refused outright;
the path is resolved with every symlink followed (strictly, when it must exist) and must land
inside one of the roots, so a symlink pointing outside is refused like an outside path.

Commands: the blocklist is a tripwire for the obviously destructive (wiping ``/``, fork bombs,
piping a download into a shell, formatting disks, powering off), not a security boundary. The
boundary is the human approval that ``run_command`` requires; the blocklist spares that human
from being asked about commands nobody should approve.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from relayline.worker.tools.registry import ToolError

_SAFE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME")


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Caps on what one tool call may read, write, run and print."""

    max_read_bytes: int = 256 * 1024
    max_write_bytes: int = 1024 * 1024
    max_output_bytes: int = 64 * 1024
    max_dir_entries: int = 500
    max_command_chars: int = 8192
    command_timeout_s: float = 30.0
    kill_grace_s: float = 2.0


def default_command_env() -> dict[str, str]:
    """A minimal environment: commands must not inherit the worker's secrets (keys, tokens)."""
    env = {key: os.environ[key] for key in _SAFE_ENV_KEYS if key in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["TERM"] = "dumb"
    return env


class Workspace:
    """The directories the built-in tools may touch, with the limits that apply.

    ``roots`` must exist; they are resolved once, here. ``command_env`` replaces the
    environment of commands (default: :func:`default_command_env`).
    """

    def __init__(
        self,
        roots: Sequence[Path],
        limits: SandboxLimits | None = None,
        *,
        command_env: Mapping[str, str] | None = None,
    ) -> None:
        if not roots:
            raise ValueError("a workspace needs at least one root")
        resolved: list[Path] = []
        for root in roots:
            path = Path(root).resolve(strict=True)
            if not path.is_dir():
                raise ValueError(f"workspace root {root} is not a directory")
            resolved.append(path)
        self.roots: tuple[Path, ...] = tuple(resolved)
        self.limits = limits or SandboxLimits()
        self.command_env: dict[str, str] = dict(
            command_env if command_env is not None else default_command_env()
        )

    def resolve(self, raw: str, *, must_exist: bool = True) -> Path:
        """The real path for ``raw`` inside the workspace, or :class:`ToolError`.

        With ``must_exist=False`` the target may be missing (a file about to be created); any
        existing part, including a dangling symlink, is still followed before the check.
        """
        shown = _shown(raw)
        if not raw or "\x00" in raw:
            raise ToolError(f"invalid path {shown}")
        candidate = Path(raw)
        if ".." in candidate.parts:
            raise ToolError(f"path {shown} may not contain '..'")
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        try:
            resolved = candidate.resolve(strict=must_exist)
        except FileNotFoundError:
            raise ToolError(f"no such file or directory: {shown}") from None
        except (OSError, RuntimeError):  # RuntimeError: symlink loop
            raise ToolError(f"cannot resolve path {shown}") from None
        if not self.contains(resolved):
            raise ToolError(f"path {shown} is outside the workspace")
        return resolved

    def contains(self, resolved: Path) -> bool:
        return any(resolved == root or resolved.is_relative_to(root) for root in self.roots)

    def display(self, resolved: Path) -> str:
        """``resolved`` relative to its root, for messages shown to the model."""
        for root in self.roots:
            if resolved.is_relative_to(root):
                rel = resolved.relative_to(root).as_posix()
                return rel if len(self.roots) == 1 else f"{root.name}/{rel}"
        return resolved.name

    def check_command(self, command: str) -> None:
        """Raise :class:`ToolError` if ``command`` is empty, too long or on the blocklist."""
        if not command.strip():
            raise ToolError("empty command")
        if len(command) > self.limits.max_command_chars:
            raise ToolError(f"command longer than {self.limits.max_command_chars} characters")
        reason = blocked_reason(command)
        if reason is not None:
            raise ToolError(f"blocked command: {reason}")


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 120 else raw[:117] + "...")


# --- command blocklist -------------------------------------------------------------------

_SEGMENT_SPLIT = re.compile(r"\$\(|[;&|\n(){}`]")
_ROOT_TARGETS = {"/", "/*", "/.", "/./", "/.*", "/..", "/./*"}
_RECURSIVE_ROOT_COMMANDS = {"rm", "chmod", "chown", "chgrp"}
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?:^|\s|/)mkfs(?:\.\w+)?(?:\s|$)"), "formatting a filesystem"),
    (re.compile(r"(?:^|\s|/)(?:mke2fs|mkswap|wipefs)(?:\s|$)"), "formatting a filesystem"),
    (
        re.compile(r"(?:^|\s|/)dd\s.*\bof=/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|disk|mapper)"),
        "writing to a block device",
    ),
    (re.compile(r">\s*/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|disk)"), "writing to a block device"),
    (
        re.compile(r"(?:^|[\s;&|/])(?:shutdown|reboot|halt|poweroff)(?:\s|$|[;&|])"),
        "shutting down or rebooting",
    ),
    (re.compile(r"(?:^|[\s;&|])init\s+[06](?:\s|$)"), "shutting down or rebooting"),
    (
        re.compile(r"\bsystemctl\s+(?:poweroff|reboot|halt|kexec|emergency|rescue)\b"),
        "shutting down or rebooting",
    ),
    (
        re.compile(
            r"\b(?:curl|wget|fetch)\b[^|]*\|\s*(?:sudo\s+)?(?:\S*/)?(?:ba|da|z|k|c|tc)?sh\b"
        ),
        "piping a download into a shell",
    ),
    (
        re.compile(r"\b(?:ba|da|z|k)?sh\s+(?:-c\s+)?\$\(\s*(?:curl|wget)\b"),
        "running a downloaded script",
    ),
    (re.compile(r"<\(\s*(?:curl|wget)\b"), "running a downloaded script"),
)
_FORK_BOMB = re.compile(r"([^\s(){}|&;]+)\(\)\{\1\|\1&\};\1")


def normalise_command(command: str) -> str:
    """Lower-cased, quotes and backslashes removed, whitespace collapsed.

    Erring towards blocking: ``"r"'m' -rf  /`` and ``rm\\ -rf /`` both normalise to ``rm -rf /``.
    """
    text = command.replace("\\\n", " ")
    text = re.sub(r"[\"'\\]", "", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def blocked_reason(command: str) -> str | None:
    """Why ``command`` is blocked, or ``None`` if it is not on the blocklist."""
    text = normalise_command(command)
    if _FORK_BOMB.search(text.replace(" ", "")):
        return "fork bomb"
    for pattern, reason in _PATTERNS:
        if pattern.search(text):
            return reason
    for segment in _SEGMENT_SPLIT.split(text):
        found = _recursive_root_reason(segment.split())
        if found is not None:
            return found
    return None


def _recursive_root_reason(tokens: list[str]) -> str | None:
    # Look at every token, not just the first, so `sudo rm`, `xargs rm` and `sh -c rm` count.
    for i, token in enumerate(tokens):
        program = token.rsplit("/", 1)[-1]
        if program not in _RECURSIVE_ROOT_COMMANDS:
            continue
        args = tokens[i + 1 :]
        flags = [a for a in args if a.startswith("-") and a != "--"]
        targets = {re.sub(r"/+", "/", a) for a in args if not a.startswith("-")}
        recursive = any(
            f in ("--recursive", "--no-preserve-root") or (not f.startswith("--") and "r" in f)
            for f in flags
        )
        if "--no-preserve-root" in flags:
            return f"{program} --no-preserve-root"
        if recursive and targets & _ROOT_TARGETS:
            return f"recursive {program} on /"
    return None
