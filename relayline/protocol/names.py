"""The names of the wire protocol: client ops, server event types, worker frame types and the
stable error codes. The web UI's copy is generated from these
(``relayline/web/static/js/protocol.js``, see :mod:`relayline.protocol.jsmodule`)."""

from __future__ import annotations

from enum import StrEnum


class Op(StrEnum):
    """What a client sends (``{"op": …, "ref": …}``); every op with a ``ref`` is answered with
    an ``ack`` or an ``error`` carrying that ``ref``."""

    AUTH = "auth"  # first-frame authentication, for clients that can set no header
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    SEND = "send"
    CANCEL = "cancel"
    APPROVE = "approve"
    PING = "ping"
    TERM_INPUT = "term.input"
    TERM_RESIZE = "term.resize"


class Reply(StrEnum):
    """Frames the relay sends a client outside any topic."""

    ACK = "ack"
    ERROR = "error"
    PONG = "pong"


class EventType(StrEnum):
    """The ``type`` of an event in a topic's log (the envelope's ``type``)."""

    MESSAGE_CREATED = "message.created"
    MESSAGE_DELTA = "message.delta"
    MESSAGE_COMPLETED = "message.completed"
    TURN_QUEUED = "turn.queued"
    TURN_STARTED = "turn.started"
    TURN_RETRYING = "turn.retrying"
    TURN_FAILED = "turn.failed"
    TURN_CANCELLED = "turn.cancelled"
    TOOL_APPROVAL_REQUESTED = "tool.approval_requested"
    TOOL_APPROVAL_RESOLVED = "tool.approval_resolved"
    WORKER_STATE = "worker.state"
    TERM_OUTPUT = "term.output"
    TERM_STATE = "term.state"
    TERM_EXITED = "term.exited"
    EVENTS_MISSED = "events.missed"


class WorkerFrame(StrEnum):
    """The ``type`` of a frame between a worker and the relay."""

    HELLO = "hello"  # worker → relay, first: capacity and id
    WELCOME = "welcome"  # relay → worker: the granted capacity
    STATE = "state"  # worker → relay
    TURN_ASSIGNED = "turn.assigned"  # relay → worker
    TURN_CANCEL = "turn.cancel"  # relay → worker
    TURN_RELEASED = "turn.released"  # worker → relay: gives back a turn it will not run
    TURN_DELTA = "turn.delta"  # worker → relay
    TURN_DONE = "turn.done"  # worker → relay
    TURN_FAILED = "turn.failed"  # worker → relay
    TOOL_APPROVAL_REQUEST = "tool.approval_request"  # worker → relay
    TOOL_APPROVAL = "tool.approval"  # relay → worker: the decision
    ERROR = "error"  # relay → worker: a frame was refused
    # Terminal sessions (workers started with --terminals; see relayline.protocol.frames).
    TERM_OPEN = "term.open"  # relay → worker: start an allowlisted program in a PTY
    TERM_INPUT = "term.input"  # relay → worker: keystrokes
    TERM_RESIZE = "term.resize"  # relay → worker
    TERM_REDRAW = "term.redraw"  # relay → worker: send the screen as it is now (a snapshot)
    TERM_CLOSE = "term.close"  # relay → worker: terminate the session
    TERM_OUTPUT = "term.output"  # worker → relay: what the program printed (or a snapshot)
    TERM_STATE = "term.state"  # worker → relay: running, its size
    TERM_EXITED = "term.exited"  # worker → relay: ended, with its status or signal


class ErrorCode(StrEnum):
    """Stable ``code`` values of errors (HTTP bodies, ``error`` frames, worker frames)."""

    VALIDATION_ERROR = "validation_error"
    INVALID_JSON = "invalid_json"
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_TYPE = "unknown_type"
    BAD_REQUEST = "bad_request"
    REQUEST_TIMEOUT = "request_timeout"
    UPGRADE_REQUIRED = "upgrade_required"
    HEADERS_TOO_LARGE = "headers_too_large"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    STALE_ATTEMPT = "stale_attempt"
    SIGNATURE_INVALID = "signature_invalid"
    UNKNOWN_KEY = "unknown_key"
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    NONCE_REUSED = "nonce_reused"
    # Terminal sessions
    NO_TERMINAL_WORKER = "no_terminal_worker"  # 503: no connected worker hosts that program
    UNKNOWN_PROGRAM = "unknown_program"  # 422: not a name in any worker's allowlist
    TOO_MANY_TERMINALS = "too_many_terminals"  # 429: the tenant's or the workers' limit
    INVALID_UTF8 = "invalid_utf8"  # term.input data that is not valid UTF-8 text
    READ_ONLY = "read_only"  # term.input / term.resize from a viewer without the write grant
    CWD_NOT_ALLOWED = "cwd_not_allowed"  # 422: a working directory outside the workspace roots
    TERMINAL_EXITED = "terminal_exited"  # 409: the session has already ended
    # The OpenAI-compatible gateway (/v1/chat/completions, /v1/models)
    UNKNOWN_MODEL = "unknown_model"  # 404: no connected worker announces that model
    NO_WORKER = "no_worker"  # 503: no worker is connected that can answer
    TOO_MANY_COMPLETIONS = "too_many_completions"  # 429: the tenant's concurrent-completions cap


class FailureCategory(StrEnum):
    """Why a turn failed (``turn.failed``'s ``category``)."""

    TIMEOUT = "timeout"
    UPSTREAM_4XX = "upstream_4xx"
    UPSTREAM_5XX = "upstream_5xx"
    CIRCUIT_OPEN = "circuit_open"
    TOOL_ERROR = "tool_error"
    INTERNAL = "internal"
    # The model server ended the stream as if done, without saying the answer was finished
    # (no finish_reason, or no [DONE]): a cut answer, kept and marked, never stored complete.
    INCOMPLETE = "incomplete"


class FinishReason(StrEnum):
    """How the model ended a complete answer (``turn.done``'s and ``message.completed``'s
    ``finish_reason``, the stored message's ``finish_reason``)."""

    STOP = "stop"  # the model finished (or hit a stop sequence)
    LENGTH = "length"  # cut at the length limit (max_tokens): stored, shown as cut
    CONTENT_FILTER = "content_filter"  # the model server withheld the rest
    TOOL_CALLS = "tool_calls"  # the model asked for tool calls (completions that pass tools)


class UsageSource(StrEnum):
    """Where an answer's token counts came from (``usage.source``; stored with its metrics)."""

    REPORTED = "reported"  # the model server counted them (an OpenAI usage object)
    # The worker counted them with the model server's own tokenizer (the prompt's texts
    # without the chat template's tokens, so a little under what the model read).
    COUNTED = "counted"
    ESTIMATED = "estimated"  # the worker estimated them (~4 characters a token)


class TermExitReason(StrEnum):
    """Why a terminal session ended (``term.exited``'s ``reason``)."""

    EXITED = "exited"  # the program ended by itself
    TERMINATED = "terminated"  # someone closed it (DELETE /v1/terminals/{id}, term.close)
    IDLE = "idle"  # no input nor output for RELAYLINE_TERMINAL_IDLE_S
    LIFETIME = "lifetime"  # open longer than RELAYLINE_TERMINAL_MAX_LIFETIME_S
    SHUTDOWN = "shutdown"  # the worker stopped
    DETACHED = "detached"  # the worker lost the relay longer than RELAYLINE_TERMINAL_DETACH_GRACE_S
    LOST = "lost"  # the relay lost the worker and it did not come back with the session
    FAILED = "failed"  # the program could not be started (``error`` says why)
