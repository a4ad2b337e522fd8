from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from relayline.worker.tools.builtins import BuiltinTools, builtin_registry
from relayline.worker.tools.registry import Tool, ToolContext, ToolError, ToolRegistry, ToolResult
from relayline.worker.tools.sandbox import SandboxLimits, Workspace


class Approvals:
    def __init__(self, answer: Any = True, raises: BaseException | None = None) -> None:
        self.answer = answer
        self.raises = raises
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, name: str, arguments: dict[str, Any]) -> bool:
        self.asked.append((name, arguments))
        if self.raises is not None:
            raise self.raises
        return self.answer  # type: ignore[no-any-return]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "README.md").write_text("# Demo\nhello\n")
    (tmp_path / "src").mkdir()
    return tmp_path


def ctx(approvals: Approvals | None = None) -> ToolContext:
    return ToolContext(request_approval=approvals or Approvals(), turn_id="t1")


def test_specs_and_dispatch_come_from_one_registry(root: Path) -> None:
    tools = BuiltinTools(Workspace([root])).tools()
    registry = ToolRegistry(tools)
    specs = registry.specs()
    assert (
        [s.name for s in specs]
        == registry.names()
        == ["read_file", "list_dir", "edit_file", "run_command"]
    )
    for spec, tool in zip(specs, tools, strict=True):
        assert registry.get(spec.name) is tool
        assert spec.parameters == tool.args_model.model_json_schema()
        assert spec.parameters["type"] == "object"
        assert spec.parameters.get("additionalProperties") is False
        assert spec.description
    assert {t.name for t in tools if t.needs_approval} == {"edit_file", "run_command"}


async def test_unknown_tool_and_invalid_arguments(root: Path) -> None:
    registry = builtin_registry([root])
    for name, arguments in [
        ("nope", "{}"),
        ("read_file", "{}"),
        ("read_file", "[1]"),
        ("read_file", "{bad json"),
        ("read_file", '{"path": 1}'),
        ("read_file", '{"path": "a", "extra": 1}'),
        ("edit_file", '{"path": "a"}'),
    ]:
        with pytest.raises(ToolError) as info:
            await registry.execute(name, arguments, ctx())
        assert info.value.category == "tool_error", (name, arguments)
    with pytest.raises(ToolError):
        registry.subset(["read_file", "nope"])
    assert registry.subset(["list_dir", "read_file"]).names() == ["list_dir", "read_file"]


def test_registry_rejects_duplicates_and_bad_names() -> None:
    class Args(BaseModel):
        pass

    async def run(args: Args, ctx: ToolContext) -> ToolResult:
        return ToolResult("ok")

    registry = ToolRegistry([Tool("t", "d", Args, run)])
    with pytest.raises(ValueError):
        registry.register(Tool("t", "d", Args, run))
    with pytest.raises(ValueError):
        registry.register(Tool("bad name", "d", Args, run))


async def test_executor_crash_becomes_tool_error() -> None:
    class Args(BaseModel):
        pass

    async def run(args: Args, ctx: ToolContext) -> ToolResult:
        raise KeyError("secret internals")

    registry = ToolRegistry([Tool("boom", "d", Args, run)])
    with pytest.raises(ToolError) as info:
        await registry.execute("boom", "", ctx())
    assert "secret" not in info.value.detail


async def test_read_file_and_list_dir_need_no_approval(root: Path) -> None:
    registry = builtin_registry([root])
    approvals = Approvals(answer=False)
    result = await registry.execute("read_file", '{"path": "README.md"}', ctx(approvals))
    assert result == ToolResult("# Demo\nhello\n")
    listing = await registry.execute("list_dir", "{}", ctx(approvals))
    assert listing.content.splitlines() == ["README.md  (13 bytes)", "src/"]
    assert approvals.asked == []


async def test_read_file_caps_and_refusals(root: Path) -> None:
    registry = builtin_registry([root], SandboxLimits(max_read_bytes=10))
    (root / "big.txt").write_text("0123456789abcdef")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    os.mkfifo(root / "pipe")
    big = await registry.execute("read_file", '{"path": "big.txt"}', ctx())
    assert big.content.startswith("0123456789\n[truncated: first 10 of 16 bytes")
    blob = await registry.execute("read_file", '{"path": "blob.bin"}', ctx())
    assert "binary file" in blob.content
    for path, message in [
        ("src", "directory"),
        ("pipe", "not a regular file"),
        ("../etc/passwd", "'..'"),
        ("/etc/passwd", "outside"),
    ]:
        with pytest.raises(ToolError, match=re.escape(message)):
            await registry.execute("read_file", json.dumps({"path": path}), ctx())


async def test_edit_file_approval_granted(root: Path) -> None:
    registry = builtin_registry([root])
    approvals = Approvals(answer=True)
    args = {"path": "notes/new.txt", "content": "hi\n"}
    result = await registry.execute("edit_file", json.dumps(args), ctx(approvals))
    assert result.status == "ok" and "notes/new.txt" in result.content
    assert (root / "notes" / "new.txt").read_text() == "hi\n"
    assert approvals.asked == [("edit_file", {**args, "old_text": None, "new_text": None})]

    replace = {"path": "README.md", "old_text": "hello", "new_text": "bye"}
    await registry.execute("edit_file", json.dumps(replace), ctx(approvals))
    assert (root / "README.md").read_text() == "# Demo\nbye\n"
    for old_text, count in [("missing", 0), ("e", 2)]:
        with pytest.raises(ToolError, match=f"occurs {count} times"):
            args = {"path": "README.md", "old_text": old_text, "new_text": "x"}
            await registry.execute("edit_file", json.dumps(args), ctx(approvals))
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "approvals",
    [
        Approvals(answer=False),
        Approvals(raises=TimeoutError()),
        Approvals(raises=ConnectionError("relay gone")),
        Approvals(answer="yes"),  # only an explicit True approves
    ],
    ids=["denied", "timeout", "callback-error", "truthy-not-true"],
)
async def test_edit_file_not_approved_is_denied(root: Path, approvals: Approvals) -> None:
    registry = builtin_registry([root])
    args = json.dumps({"path": "README.md", "content": "overwritten"})
    result = await registry.execute("edit_file", args, ctx(approvals))
    assert result.status == "denied"
    assert result.content.startswith("denied:")
    assert (root / "README.md").read_text() == "# Demo\nhello\n"
    assert len(approvals.asked) == 1


async def test_sandbox_refusals_happen_before_approval(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    registry = builtin_registry([root])
    approvals = Approvals(answer=True)
    outside = tmp_path_factory.mktemp("outside")
    (root / "link").symlink_to(outside)
    for name, args in [
        ("edit_file", {"path": "../x", "content": "x"}),
        ("edit_file", {"path": str(outside / "x"), "content": "x"}),
        ("edit_file", {"path": "link/x", "content": "x"}),
        ("edit_file", {"path": "src", "content": "x"}),
        ("run_command", {"command": "rm -rf /"}),
        ("run_command", {"command": "ls", "cwd": "/"}),
    ]:
        with pytest.raises(ToolError):
            await registry.execute(name, json.dumps(args), ctx(approvals))
    assert approvals.asked == []
    assert list(outside.iterdir()) == []
