from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from llm_fake_upstream import FakeUpstream, answer, status, tool_calls
from procgroup_helpers import HAVE_PROC, live_group_members

from relayline.protocol.generation import Generation
from relayline.worker.agent import AgentRunner
from relayline.worker.llm.base import ChatMessage, LLMError, StreamChunk, ToolCall, ToolSpec
from relayline.worker.llm.local import LocalModel
from relayline.worker.llm.openai_compat import OpenAICompatClient, RetryPolicy, Timeouts
from relayline.worker.tools.builtins import builtin_registry
from relayline.worker.tools.sandbox import SandboxLimits

ALL = ["read_file", "list_dir", "edit_file", "run_command"]


class Recorder:
    def __init__(self, approve: bool = True) -> None:
        self.deltas: list[str] = []
        self.approve = approve
        self.asked: list[str] = []

    async def on_delta(self, text: str) -> None:
        self.deltas.append(text)

    async def request_approval(self, name: str, arguments: dict[str, Any]) -> bool:
        self.asked.append(name)
        return self.approve


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "README.md").write_text("# Demo project\nIt relays chats.\n")
    return tmp_path


def runner_for(workspace: Path, llm: Any = None, **kw: Any) -> AgentRunner:
    registry = builtin_registry([workspace], SandboxLimits(command_timeout_s=30, kill_grace_s=5))
    return AgentRunner(llm or LocalModel(delay_s=0), registry, model="local", **kw)


async def run(
    runner: AgentRunner,
    text: str,
    rec: Recorder,
    tools: Sequence[str] = ALL,
    timeout_s: float | None = 10,
) -> Any:
    return await runner.run(
        [ChatMessage("user", text)],
        tools=tools,
        timeout_s=timeout_s,
        on_delta=rec.on_delta,
        request_approval=rec.request_approval,
        turn_id="turn-1",
    )


async def test_plain_answer(workspace: Path) -> None:
    rec = Recorder()
    result = await run(runner_for(workspace), "hello there", rec)
    assert result.status == "completed"
    assert result.text == "".join(rec.deltas) and "> hello there" in result.text
    assert result.tokens_in > 0 and result.tokens_out == len(rec.deltas)
    assert result.first_token_latency_s is not None and result.first_token_latency_s >= 0
    assert result.tool_rounds == 0 and result.new_messages == ()


async def test_tool_round_with_local_model(workspace: Path) -> None:
    rec = Recorder()
    result = await run(runner_for(workspace), "/read README.md", rec)
    assert result.status == "completed" and result.tool_rounds == 1
    assert result.text == "".join(rec.deltas)
    assert result.text.startswith("Sure, calling `read_file`.\n\nHere is what `read_file` returned")
    assert "# Demo project" in result.text
    assistant, tool = result.new_messages
    assert assistant.tool_calls[0].name == "read_file"
    assert tool.role == "tool" and tool.tool_call_id == assistant.tool_calls[0].id
    assert tool.content == "# Demo project\nIt relays chats.\n"
    assert rec.asked == []


async def test_approval_asked_and_denied(workspace: Path) -> None:
    rec = Recorder(approve=False)
    result = await run(runner_for(workspace), "/edit README.md gone", rec)
    assert rec.asked == ["edit_file"]
    assert "declined `edit_file`" in result.text
    assert (workspace / "README.md").read_text().startswith("# Demo")


async def test_tool_errors_go_back_to_the_model(workspace: Path) -> None:
    rec = Recorder()
    result = await run(runner_for(workspace), "/read ../../etc/passwd", rec)
    assert result.status == "completed"
    assert "did not work" in result.text and "'..'" in result.text
    assert result.new_messages[1].content.startswith("error:")


async def test_only_enabled_tools_are_offered(workspace: Path) -> None:
    rec = Recorder()
    result = await run(runner_for(workspace), "/run ls", rec, tools=["read_file"])
    assert "not enabled" in result.text and result.tool_rounds == 0
    with pytest.raises(LLMError) as info:
        await run(runner_for(workspace), "hi", rec, tools=["no_such_tool"])
    assert info.value.category == "tool_error"


class LoopingModel:
    """Calls a tool whenever tools are offered; answers only when they are not."""

    def __init__(self, final_text: str = "done") -> None:
        self.final_text = final_text
        self.offers: list[int] = []

    async def aclose(self) -> None:
        return None

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
    ) -> AsyncIterator[StreamChunk]:
        self.offers.append(len(tools))
        if tools:
            yield StreamChunk(tool_call=ToolCall(f"c{len(self.offers)}", "list_dir", "{}"))
        elif self.final_text:
            yield StreamChunk(text=self.final_text)


async def test_max_tool_rounds_forces_an_answer(workspace: Path) -> None:
    model = LoopingModel()
    result = await run(runner_for(workspace, model, max_tool_rounds=3), "go", Recorder())
    assert model.offers == [4, 4, 4, 0]
    assert result.status == "tool_limit" and result.tool_rounds == 3 and result.text == "done"
    assert result.tokens_in > 0  # estimated: the model reported no usage


async def test_max_tool_rounds_without_an_answer_fails(workspace: Path) -> None:
    with pytest.raises(LLMError) as info:
        await run(
            runner_for(workspace, LoopingModel(final_text=""), max_tool_rounds=2), "go", Recorder()
        )
    assert info.value.category == "tool_error"


async def test_turn_deadline(workspace: Path) -> None:
    rec = Recorder()
    with pytest.raises(LLMError) as info:
        await run(
            runner_for(workspace, LocalModel(delay_s=0.05)),
            "a long question",
            rec,
            timeout_s=0.2,
        )
    assert info.value.category == "timeout"
    # Cut mid-stream: the full answer is 78 words at 0.05s each, 0.2s allow at most 4.
    assert len(rec.deltas) < 10


async def test_callback_timeout_error_is_not_a_turn_timeout(workspace: Path) -> None:
    async def broken(text: str) -> None:
        raise TimeoutError("socket send timed out")

    with pytest.raises(TimeoutError):
        await runner_for(workspace).run(
            [ChatMessage("user", "hi")],
            on_delta=broken,
            request_approval=Recorder().request_approval,
        )


@pytest.mark.skipif(not HAVE_PROC, reason="needs Linux /proc")
async def test_cancel_kills_the_running_command(workspace: Path) -> None:
    rec = Recorder()
    task = asyncio.create_task(
        run(runner_for(workspace), "/run echo $$ > pid; trap '' TERM; sleep 30", rec, timeout_s=60)
    )
    pid_file = workspace / "pid"
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.01)
    pgid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live_group_members(pgid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pgid, 0)  # the leader itself was reaped, not left a zombie
    assert rec.asked == ["run_command"]


async def test_with_openai_compatible_upstream(workspace: Path) -> None:
    upstream = FakeUpstream()
    await upstream.start()
    try:
        upstream.play(
            tool_calls([("call_1", "read_file", '{"path": "README.md"}')]),
            answer(["The README ", "says hi."]),
        )
        client = OpenAICompatClient(
            upstream.base_url, timeouts=Timeouts(1, 2, 10), retry=RetryPolicy(max_attempts=1)
        )
        async with client:
            rec = Recorder()
            result = await run(runner_for(workspace, client), "what is in the readme?", rec)
            assert result.text == "The README says hi." and result.tool_rounds == 1
            # Round 1 reports no usage, so ~4 characters a token; round 2 reports 7 and 2.
            question, arguments = "what is in the readme?", '{"path": "README.md"}'
            estimated_in, estimated_out = -(-len(question) // 4), -(-len(arguments) // 4)
            assert (result.tokens_in, result.tokens_out) == (estimated_in + 7, estimated_out + 2)
            second = upstream.requests[1]["messages"]
            assert second[-1] == {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": "# Demo project\nIt relays chats.\n",
            }
            assert second[-2]["tool_calls"][0]["id"] == "call_1"

            upstream.play(status(400, "context too long"))
            with pytest.raises(LLMError) as info:
                await run(runner_for(workspace, client), "again", Recorder())
            assert info.value.category == "upstream_4xx"
    finally:
        await upstream.close()


async def test_tool_arguments_json_reaches_the_tool(workspace: Path) -> None:
    rec = Recorder()
    args = json.dumps({"path": "made.txt", "content": "x"})
    result = await run(runner_for(workspace), f"/tool edit_file {args}", rec)
    assert rec.asked == ["edit_file"] and (workspace / "made.txt").read_text() == "x"
    assert result.status == "completed"


class ChattyToolModel:
    """Says something, calls a tool, then answers: text from two rounds in one message."""

    async def aclose(self) -> None:
        return None

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
    ) -> AsyncIterator[StreamChunk]:
        if messages[-1].role == "user":
            yield StreamChunk(text="Checking.")
            yield StreamChunk(tool_call=ToolCall("c1", "list_dir", "{}"))
        else:
            yield StreamChunk(text="Found it.")


async def test_rounds_are_separated_by_one_paragraph_break(workspace: Path) -> None:
    rec = Recorder()
    result = await run(runner_for(workspace, ChattyToolModel()), "where?", rec)
    assert result.text == "Checking.\n\nFound it." == "".join(rec.deltas)
    assert result.new_messages[0].content == "Checking."
