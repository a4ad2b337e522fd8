"""Value types and the ``LLMClient`` interface shared by every model adapter.

An adapter (``OpenAICompatClient``, ``LocalModel``) turns a conversation into a stream of
:class:`StreamChunk` values. Everything that can go wrong is reported as an :class:`LLMError`
whose ``category`` is one of the worker protocol's ``turn.failed`` categories, so the worker
forwards failures to the relay without translating them again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, get_args

from relayline.protocol.generation import Generation

Role = Literal["system", "user", "assistant", "tool"]

REQUEST_ID: ContextVar[str | None] = ContextVar("relayline_llm_request_id", default=None)
"""The turn's correlation id while the worker runs it: adapters that call a server send it as
``X-Request-ID``, so the server's logs can be matched with the relay's and the worker's."""

FailureCategory = Literal[
    "timeout",
    "upstream_4xx",
    "upstream_5xx",
    "circuit_open",
    "tool_error",
    "internal",
    "incomplete",
]


class LLMError(Exception):
    """A turn could not be answered; ``category`` is what ``turn.failed`` reports.

    ``detail`` is safe to show to a user: it never contains credentials or request bodies,
    only a short description and at most a truncated snippet of an upstream error message.
    """

    def __init__(self, category: FailureCategory, detail: str = "") -> None:
        if category not in FAILURE_CATEGORIES:
            raise ValueError(f"unknown failure category {category!r}")
        self.detail = detail or category.replace("_", " ")
        super().__init__(self.detail)
        self.category: FailureCategory = category
        self.code: str = category

    def __repr__(self) -> str:
        return f"{type(self).__name__}(category={self.category!r}, detail={self.detail!r})"


FAILURE_CATEGORIES: tuple[FailureCategory, ...] = get_args(FailureCategory)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call requested by the model; ``arguments`` is a JSON object as text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one model call: ``reported`` by the model server, or ``counted`` with its
    tokenizer when it reported none."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    source: Literal["reported", "counted"] = "reported"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation.

    ``tool_calls`` is set only on assistant messages that asked for tools; ``tool_call_id``
    only on ``tool`` messages, naming the call whose result ``content`` carries.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatMessage:
        """Build a message from a wire dict (``{"role", "content", ...}``); raises ValueError."""
        role = data.get("role")
        if role not in get_args(Role):
            raise ValueError(f"invalid message role {role!r}")
        content = data.get("content") or ""
        if not isinstance(content, str):
            raise ValueError("message content must be a string")
        calls = tuple(
            ToolCall(id=str(c["id"]), name=str(c["name"]), arguments=str(c.get("arguments", "{}")))
            for c in data.get("tool_calls") or ()
        )
        call_id = data.get("tool_call_id")
        return cls(
            role=cast(Role, role),
            content=content,
            tool_calls=calls,
            tool_call_id=None if call_id is None else str(call_id),
        )


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as offered to the model: ``parameters`` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One item of a model stream; exactly one of ``text``, ``tool_call``, ``finish_reason``,
    ``usage`` is set.

    ``text`` is a delta to append to the answer. ``tool_call`` is a *complete* call (adapters
    assemble streamed fragments before yielding it). ``finish_reason`` is how the model ended
    the answer (``stop``, ``length``, ``tool_calls``…), once, after every text and tool call.
    ``usage`` comes at most once, last.
    """

    text: str | None = None
    tool_call: ToolCall | None = None
    usage: Usage | None = None
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        # Added up in line: a chunk is made per token, and a generator here was half its cost.
        present = (
            (self.text is not None)
            + (self.tool_call is not None)
            + (self.usage is not None)
            + (self.finish_reason is not None)
        )
        if present != 1:
            raise ValueError(
                "StreamChunk needs exactly one of text, tool_call, finish_reason, usage"
            )


ToolChoice = str | dict[str, Any]
"""OpenAI's ``tool_choice`` (``"auto"``, ``"none"``, ``"required"`` or a named function), passed
through to the model server as the client sent it."""


class LLMClient(Protocol):
    """A model endpoint. Implementations are safe to share between concurrent turns."""

    def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Stream the model's answer to ``messages``, offering ``tools`` (with ``tool_choice``
        when given), sampled as ``options`` says (``None``: the model server's defaults).

        Guarantees:

        - Text deltas arrive in order; once one has been yielded, the call is never retried,
          so a caller never sees duplicated text. Retries, if any, happen before that.
        - Tool calls are yielded whole, after their arguments have been fully received.
        - A complete answer yields one ``finish_reason`` chunk after its text and tool calls;
          an answer the model server did not finish raises instead (``incomplete``).
        - A ``usage`` chunk, if any, is the last item; it carries counts the model server
          reported, never estimates.
        - Every failure is raised as :class:`LLMError`; nothing else escapes except
          ``asyncio.CancelledError``.
        - The returned iterator is an async generator: exhaust it or ``aclose()`` it to release
          its connection and concurrency slot at once.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent. Streams started afterwards fail."""
        ...
