"""The built-in tools: ``read_file``, ``list_dir``, ``edit_file`` and ``run_command``.

All four are confined to a :class:`~relayline.worker.tools.sandbox.Workspace`. ``edit_file`` and
``run_command`` change things, so they need the user's approval; the two readers do not.
File work runs in a thread so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relayline.worker.tools.process import CommandOutcome, run_shell
from relayline.worker.tools.registry import Tool, ToolContext, ToolError, ToolRegistry, ToolResult
from relayline.worker.tools.sandbox import SandboxLimits, Workspace

_BINARY_SNIFF = 8192


class ReadFileArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="File to read, relative to the workspace root.")


class ListDirArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(".", description="Directory to list, relative to the workspace root.")


class EditFileArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="File to write, relative to the workspace root.")
    content: str | None = Field(
        None, description="New full content of the file (creates or overwrites it)."
    )
    old_text: str | None = Field(
        None, description="Exact text to replace; must occur exactly once in the file."
    )
    new_text: str | None = Field(None, description="Replacement for old_text.")

    @model_validator(mode="after")
    def _one_mode(self) -> EditFileArgs:
        writes = self.content is not None
        replaces = self.old_text is not None or self.new_text is not None
        if writes == replaces:
            raise ValueError("give either content, or old_text together with new_text")
        if replaces and (not self.old_text or self.new_text is None):
            raise ValueError("old_text must be non-empty and new_text must be given")
        return self


class RunCommandArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str = Field(description="Shell command, run with /bin/sh -c.")
    cwd: str = Field(".", description="Working directory, relative to the workspace root.")


class BuiltinTools:
    """Executors bound to one workspace; :meth:`tools` lists them as :class:`Tool` values."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool("read_file", "Read a text file from the workspace.", ReadFileArgs,
                 self.read_file),
            Tool("list_dir", "List the entries of a workspace directory.", ListDirArgs,
                 self.list_dir),
            Tool("edit_file",
                 "Write a workspace file: full new content, or replace one exact snippet.",
                 EditFileArgs, self.edit_file, needs_approval=True,
                 validate=self._validate_edit),
            Tool("run_command",
                 "Run a shell command in the workspace (time-limited, output capped).",
                 RunCommandArgs, self.run_command, needs_approval=True,
                 validate=self._validate_command),
        ]  # fmt: skip

    async def read_file(self, args: ReadFileArgs, ctx: ToolContext) -> ToolResult:
        path = self.workspace.resolve(args.path)
        cap = self.workspace.limits.max_read_bytes
        return ToolResult(await asyncio.to_thread(_read_text, path, args.path, cap))

    async def list_dir(self, args: ListDirArgs, ctx: ToolContext) -> ToolResult:
        path = self.workspace.resolve(args.path)
        cap = self.workspace.limits.max_dir_entries
        return ToolResult(await asyncio.to_thread(_list_dir, path, args.path, cap))

    def _validate_edit(self, args: EditFileArgs) -> None:
        # Replacing needs an existing file; writing full content may create one.
        path = self.workspace.resolve(args.path, must_exist=args.old_text is not None)
        size = len((args.content if args.content is not None else args.new_text or "").encode())
        if size > self.workspace.limits.max_write_bytes:
            raise ToolError(f"content larger than {self.workspace.limits.max_write_bytes} bytes")
        if path.exists() and not path.is_file():
            raise ToolError(f"{args.path!r} exists and is not a regular file")

    async def edit_file(self, args: EditFileArgs, ctx: ToolContext) -> ToolResult:
        self._validate_edit(args)  # again: the file may have changed while approval waited
        path = self.workspace.resolve(args.path, must_exist=False)
        limit = self.workspace.limits.max_write_bytes
        summary = await asyncio.to_thread(_edit, path, args, limit)
        return ToolResult(f"{summary} {self.workspace.display(path)}")

    def _validate_command(self, args: RunCommandArgs) -> None:
        self.workspace.check_command(args.command)
        if not self.workspace.resolve(args.cwd).is_dir():
            raise ToolError(f"cwd {args.cwd!r} is not a directory")

    async def run_command(self, args: RunCommandArgs, ctx: ToolContext) -> ToolResult:
        self._validate_command(args)
        limits = self.workspace.limits
        outcome = await run_shell(
            args.command,
            cwd=self.workspace.resolve(args.cwd),
            env=self.workspace.command_env,
            timeout_s=limits.command_timeout_s,
            kill_grace_s=limits.kill_grace_s,
            max_output_bytes=limits.max_output_bytes,
        )
        return _command_result(outcome, limits)


def builtin_registry(roots: Sequence[Path], limits: SandboxLimits | None = None) -> ToolRegistry:
    """A registry with the four built-in tools confined to ``roots``."""
    return ToolRegistry(BuiltinTools(Workspace(roots, limits)).tools())


def _command_result(outcome: CommandOutcome, limits: SandboxLimits) -> ToolResult:
    text = outcome.output.decode("utf-8", errors="replace")
    if outcome.timed_out:
        footer = f"[timed out after {limits.command_timeout_s:g}s; the command was stopped]"
    elif outcome.truncated:
        footer = f"[output truncated at {limits.max_output_bytes} bytes; the command was stopped]"
    else:
        footer = f"[exit code {outcome.exit_code}]"
    body = f"{text.rstrip()}\n{footer}" if text.strip() else footer
    return ToolResult(body, status="ok" if outcome.exit_code == 0 else "error")


def _read_text(path: Path, shown: str, cap: int) -> str:
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ToolError(f"{shown!r} is a directory; use list_dir")
        if not stat.S_ISREG(info.st_mode):
            raise ToolError(f"{shown!r} is not a regular file")
        # O_NOFOLLOW: the path was resolved, a symlink here means it was swapped since.
        # O_NONBLOCK: a FIFO slipped in must not hang the call.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(cap + 1)
    except OSError as exc:
        raise ToolError(f"cannot read {shown!r}: {exc.strerror or type(exc).__name__}") from None
    if b"\x00" in data[:_BINARY_SNIFF]:
        return f"({shown} is a binary file of {info.st_size} bytes; not shown)"
    text = data[:cap].decode("utf-8", errors="replace")
    if len(data) > cap:
        text += f"\n[truncated: first {cap} of {info.st_size} bytes shown]"
    return text


def _list_dir(path: Path, shown: str, cap: int) -> str:
    try:
        with os.scandir(path) as entries:
            items = sorted(entries, key=lambda e: e.name)
    except NotADirectoryError:
        raise ToolError(f"{shown!r} is not a directory") from None
    except OSError as exc:
        raise ToolError(f"cannot list {shown!r}: {exc.strerror or type(exc).__name__}") from None
    lines = []
    for entry in items[:cap]:
        if entry.is_symlink():
            lines.append(f"{entry.name}@")
        elif entry.is_dir():
            lines.append(f"{entry.name}/")
        else:
            try:
                lines.append(f"{entry.name}  ({entry.stat().st_size} bytes)")
            except OSError:
                lines.append(entry.name)
    if len(items) > cap:
        lines.append(f"[{len(items) - cap} more entries not shown]")
    return "\n".join(lines) if lines else "(empty directory)"


def _edit(path: Path, args: EditFileArgs, limit: int) -> str:
    try:
        if args.content is not None:
            _atomic_write(path, args.content.encode())
            return f"wrote {len(args.content.encode())} bytes to"
        assert args.old_text is not None and args.new_text is not None
        with open(path, "rb") as handle:
            original = handle.read(limit + 1)
        if len(original) > limit:
            raise ToolError(f"{args.path!r} is larger than {limit} bytes; cannot edit")
        text = original.decode("utf-8")
        count = text.count(args.old_text)
        if count != 1:
            raise ToolError(
                f"old_text occurs {count} times in {args.path!r}; it must occur exactly once"
            )
        _atomic_write(path, text.replace(args.old_text, args.new_text, 1).encode())
        return "replaced 1 occurrence in"
    except UnicodeDecodeError:
        raise ToolError(f"{args.path!r} is not UTF-8 text") from None
    except OSError as exc:
        raise ToolError(
            f"cannot write {args.path!r}: {exc.strerror or type(exc).__name__}"
        ) from None


def _atomic_write(path: Path, data: bytes) -> None:
    # Write-then-rename: a crash or a concurrent reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
