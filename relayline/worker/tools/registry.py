"""Tools the model may call: one registry is both what the model is offered and what runs.

A :class:`Tool` pairs a pydantic model for its arguments with an async executor. The JSON
Schema in :meth:`ToolRegistry.specs` is generated from that model and :meth:`ToolRegistry.execute`
validates with the same model, so the offer and the dispatch cannot drift apart.

Order of checks in ``execute``: known tool → arguments valid → ``validate`` hook (sandbox
rules) → human approval if ``needs_approval`` → executor. A request that breaks the rules is
refused before anyone is asked to approve it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from relayline.worker.llm.base import LLMError, ToolSpec

log = logging.getLogger(__name__)

ApprovalCallback = Callable[[str, dict[str, Any]], Awaitable[bool]]
"""``request_approval(tool_name, arguments) -> approved``; supplied by the worker connection."""

ToolStatus = Literal["ok", "error", "denied"]

ArgsT = TypeVar("ArgsT", bound=BaseModel)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-style function names allow


class ToolError(LLMError):
    """A tool call that cannot run: unknown tool, invalid arguments, refused by the sandbox."""

    def __init__(self, detail: str) -> None:
        super().__init__("tool_error", detail)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What an executor may use besides its arguments; built per turn by the caller."""

    request_approval: ApprovalCallback
    turn_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome handed back to the model as a ``tool`` message (``content``)."""

    content: str
    status: ToolStatus = "ok"

    @classmethod
    def error(cls, detail: str) -> ToolResult:
        return cls(content=f"error: {detail}", status="error")

    @classmethod
    def denied(cls, tool_name: str) -> ToolResult:
        return cls(content=f"denied: the user did not approve {tool_name}", status="denied")


@dataclass(frozen=True, slots=True)
class Tool(Generic[ArgsT]):
    """One tool. ``validate`` (optional) applies rules the schema cannot express and raises
    :class:`ToolError`; ``run`` does the work and may also raise :class:`ToolError`."""

    name: str
    description: str
    args_model: type[ArgsT]
    run: Callable[[ArgsT, ToolContext], Awaitable[ToolResult]]
    needs_approval: bool = False
    validate: Callable[[ArgsT], None] | None = None

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.args_model.model_json_schema())

    def parse(self, arguments_json: str) -> ArgsT:
        try:
            return self.args_model.model_validate_json(arguments_json.strip() or "{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)[:5]
            )
            raise ToolError(f"invalid arguments for {self.name}: {problems}") from None


class ToolRegistry:
    """An ordered set of tools, by name. Immutable after construction except :meth:`register`."""

    def __init__(self, tools: Iterable[Tool[Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any]) -> None:
        if not _NAME.match(tool.name):
            raise ValueError(f"invalid tool name {tool.name!r}")
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} registered twice")
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool[Any]:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}") from None

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """The registry restricted to ``names`` (a turn's enabled tools); unknown → ToolError."""
        return ToolRegistry(self.get(name) for name in dict.fromkeys(names))

    def specs(self) -> list[ToolSpec]:
        """What the model is offered, in registration order."""
        return [tool.spec() for tool in self._tools.values()]

    async def execute(self, name: str, arguments_json: str, ctx: ToolContext) -> ToolResult:
        """Validate and run one call; returns a ``denied`` result when approval is refused.

        Raises :class:`ToolError` for an unknown tool, invalid arguments, a sandbox refusal or
        a failing executor (an unexpected exception is logged and reported without details).
        ``asyncio.CancelledError`` propagates; executors clean up (e.g. kill processes) first.
        """
        tool = self.get(name)
        args = tool.parse(arguments_json)
        if tool.validate is not None:
            tool.validate(args)
        if tool.needs_approval and not await _approved(ctx, name, args.model_dump(mode="json")):
            return ToolResult.denied(name)
        try:
            return await tool.run(args, ctx)
        except ToolError:
            raise
        except Exception as exc:
            log.exception("tool %s failed (turn %s)", name, ctx.turn_id)
            raise ToolError(f"{name} failed unexpectedly ({type(exc).__name__})") from exc


async def _approved(ctx: ToolContext, name: str, arguments: dict[str, Any]) -> bool:
    """Ask the human; anything but an explicit ``True`` (timeouts and errors included) is no."""
    try:
        answer = await ctx.request_approval(name, arguments)
    except TimeoutError:
        log.info("approval for %s timed out (turn %s)", name, ctx.turn_id)
        return False
    except Exception:
        log.warning("approval callback for %s failed (turn %s)", name, ctx.turn_id, exc_info=True)
        return False
    return answer is True
