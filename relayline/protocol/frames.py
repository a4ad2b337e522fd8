"""The shapes of the wire protocol's frames, as ``TypedDict``s (JSON objects on the wire; a
dict costs nothing to build or decode, so the hot paths keep plain dicts and these types check
what they put in them). Names of ops, events and frame types are in :mod:`.names`.

TypedDicts rather than msgspec Structs or dataclasses: the decode path is one ``json.loads`` per
frame and the encode path one ``json.dumps`` per event (shared by every subscriber); a typed
decoder would add a conversion at both ends, and no benchmark here shows that it would pay.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

# The event envelope, server to client (one per WebSocket text frame; an SSE ``data:`` line).


class Envelope(TypedDict):
    v: Literal[1]
    id: str  # unique per event; the trace id in logs
    topic: str  # chat:<id> | term:<id> | tenant:<id> | admin
    type: str  # an EventType
    seq: int  # the topic's next sequence number
    ts: int  # milliseconds since the Unix epoch
    data: dict[str, Any]


# Client ops (client → relay); each may carry a ``ref`` that its ack or error repeats.


class _Op(TypedDict):
    op: str
    ref: NotRequired[str | int]


class AuthOp(_Op):
    token: str


class SubscribeOp(_Op):
    topic: str
    epoch: NotRequired[str]
    after_seq: NotRequired[int]


class UnsubscribeOp(_Op):
    topic: str


class SendOp(_Op):
    topic: str
    content: str
    client_msg_id: NotRequired[str]
    # The op's request id (8-128 of A-Z a-z 0-9 . _ : -; else the relay makes one): the turn's
    # correlation id, as a REST post's X-Request-ID.
    request_id: NotRequired[str]


class CancelOp(_Op):
    topic: str


class ApproveOp(_Op):
    topic: str
    approval_id: str
    decision: Literal["approve", "deny"]


class TermInputOp(_Op):
    topic: str
    data: str


class TermResizeOp(_Op):
    topic: str
    cols: int
    rows: int


# Replies (relay → client) outside any topic.


class ErrorData(TypedDict):
    code: str  # an ErrorCode
    detail: str


class ErrorReply(TypedDict):
    type: Literal["error"]
    ref: str | int | None
    data: ErrorData


# The data of a conversation's events (see relayline.turns.events, their one publisher).


class MessageCreatedData(TypedDict):
    message: dict[str, Any]  # the stored message, as the REST API shows it


class TurnQueuedData(TypedDict):
    turn_id: str
    message_id: str
    correlation_id: str | None  # the request id of the post that created the turn


class TurnStartedData(TypedDict):
    turn_id: str
    attempt: int
    message_id: str
    worker_id: str
    correlation_id: str | None  # the request id of the post that created the turn


class MessageDeltaData(TypedDict):
    message_id: str
    turn_id: str
    offset: int  # characters of the answer before this text: gap-free, in order
    text: str
    # A completion's tool calls, in OpenAI's streamed form ({index, id, type, function:
    # {name, arguments}}); with them ``text`` is empty and ``offset`` unchanged.
    tool_calls: NotRequired[list[dict[str, Any]]]


class MessageCompletedData(TypedDict):
    message_id: str
    turn_id: str
    seq: int
    content: str
    finish_reason: str  # a FinishReason
    metrics: dict[str, Any]  # timings, token counts and usage_source
    correlation_id: str | None  # the request id of the post that created the turn
    tool_calls: NotRequired[list[dict[str, Any]]]  # a completion's tool calls, whole


class TurnRetryingData(TypedDict):
    turn_id: str
    attempt: int
    reason: str
    correlation_id: str | None  # the request id of the post that created the turn


class TurnFailedData(TypedDict):
    turn_id: str
    message_id: str | None
    category: str  # a FailureCategory
    detail: str
    correlation_id: str | None  # the request id of the post that created the turn


class TurnCancelledData(TypedDict):
    turn_id: str
    correlation_id: str | None  # the request id of the post that created the turn


class ApprovalResolvedData(TypedDict):
    approval_id: str
    decision: str


class EventsMissedData(TypedDict):
    reason: str


# Worker frames (both directions on /v1/worker/ws); ``type`` is a WorkerFrame.


class Hello(TypedDict):
    type: Literal["hello"]
    worker_id: NotRequired[str]
    capacity: int
    models: NotRequired[list[str]]  # what it answers: completions of these models come to it
    # It coalesces answers' texts itself, by each turn.assigned's coalesce_ms.
    coalesces: NotRequired[bool]


class Welcome(TypedDict):
    type: Literal["welcome"]
    worker_id: str
    capacity: int


class CompletionRequest(TypedDict):
    tools: NotRequired[list[dict[str, Any]]]
    tool_choice: NotRequired[str | dict[str, Any]]


class TurnAssigned(TypedDict):
    type: Literal["turn.assigned"]
    turn_id: str
    attempt: int
    chat_id: str
    messages: list[dict[str, Any]]
    tools: list[str]
    model: str | None  # the tenant's model; None: the worker's own
    system_prompt: str | None
    # The tenant's generation settings that are set (relayline.protocol.generation); the
    # worker adds its defaults and holds them to its limits.
    generation: NotRequired[dict[str, Any]]
    correlation_id: str
    deadline: int  # ms since the Unix epoch
    # The relay's coalescing for this answer (RELAYLINE_DELTA_COALESCE_MS, 0 for a completion,
    # and ..._CHARS): a worker whose hello says ``coalesces`` merges its texts by them.
    coalesce_ms: NotRequired[int]
    coalesce_chars: NotRequired[int]
    # A completion of the OpenAI-compatible gateway: answer ``messages`` in one model call,
    # offering these tools (OpenAI's form) with this tool_choice, and stream tool calls back
    # in ``turn.delta``'s ``tool_calls`` instead of running tools.
    completion: NotRequired[CompletionRequest]


class TurnDelta(TypedDict):
    type: Literal["turn.delta"]
    turn_id: str
    attempt: int
    text: str
    tool_calls: NotRequired[list[dict[str, Any]]]  # a completion's, as in message.delta


class Usage(TypedDict):
    tokens_in: int
    tokens_out: int
    source: NotRequired[str]  # a UsageSource; absent: "estimated"


class TurnDone(TypedDict):
    type: Literal["turn.done"]
    turn_id: str
    attempt: int
    usage: NotRequired[Usage]
    finish_reason: NotRequired[str]  # a FinishReason; absent: "stop"


class TurnFailedFrame(TypedDict):
    type: Literal["turn.failed"]
    turn_id: str
    attempt: int
    category: str  # a FailureCategory
    detail: str


class TurnCancel(TypedDict):
    type: Literal["turn.cancel"]
    turn_id: str
    attempt: int


# Terminal sessions. Topic ``term:<id>``; the events' data:


class TermOutputData(TypedDict):
    data: str  # text the program printed (UTF-8 decoded; never a character split in two)
    # True: ``data`` redraws the whole screen as it is now (clear, every cell, the cursor);
    # a viewer that starts or lost events waits for one (see ``term.redraw``).
    snapshot: NotRequired[bool]
    cols: NotRequired[int]  # with a snapshot: the screen's size
    rows: NotRequired[int]


class TermStateData(TypedDict):
    state: Literal["starting", "running", "detached"]  # detached: its worker is away
    program: str
    cols: int
    rows: int


class TermExitedData(TypedDict):
    reason: str  # a TermExitReason
    status: NotRequired[int]  # the program's exit status, when it exited
    signal: NotRequired[int]  # the signal that ended it, when one did
    error: NotRequired[ErrorData]  # with reason "failed": why it could not start


# Worker frames of terminal sessions (``id`` is the session's id, as in ``term:<id>``).


class TermOpen(TypedDict):
    type: Literal["term.open"]
    id: str
    program: str  # a name of the worker's allowlist, never a command line
    cols: int
    rows: int
    cwd: NotRequired[str]  # inside the worker's workspace roots; absent: the first root
    # Opaque to the worker, returned with the session in ``state.terminals.sessions``: how a
    # relay that restarted (or another instance) learns whose session it is.
    meta: dict[str, Any]


class TermInputFrame(TypedDict):
    type: Literal["term.input"]
    id: str
    data: str  # at most TERM_INPUT_MAX_BYTES of UTF-8


class TermResizeFrame(TypedDict):
    type: Literal["term.resize"]
    id: str
    cols: int
    rows: int


class TermRedraw(TypedDict):
    type: Literal["term.redraw"]
    id: str


class TermClose(TypedDict):
    type: Literal["term.close"]
    id: str


class TermOutputFrame(TypedDict):
    type: Literal["term.output"]
    id: str
    data: str
    snapshot: NotRequired[bool]
    cols: NotRequired[int]
    rows: NotRequired[int]


class TermStateFrame(TypedDict):
    type: Literal["term.state"]
    id: str
    state: Literal["running"]
    program: str
    cols: int
    rows: int


class TermExitedFrame(TypedDict):
    type: Literal["term.exited"]
    id: str
    reason: str  # a TermExitReason
    status: NotRequired[int]
    signal: NotRequired[int]
    error: NotRequired[ErrorData]


class TerminalSessionInfo(TypedDict):
    id: str
    program: str
    cols: int
    rows: int
    meta: dict[str, Any]


class TerminalsAnnounce(TypedDict):
    """``terminals`` in a worker's ``hello`` and ``state``: what it can run and runs now."""

    programs: list[str]  # the allowlist's names
    capacity: int  # sessions it runs at most at once
    sessions: list[TerminalSessionInfo]
