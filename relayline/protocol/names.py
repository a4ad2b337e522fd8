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


class UsageSource(StrEnum):
    """Where an answer's token counts came from (``usage.source``; stored with its metrics)."""

    REPORTED = "reported"  # the model server counted them (an OpenAI usage object)
    # The worker counted them with the model server's own tokenizer (the prompt's texts
    # without the chat template's tokens, so a little under what the model read).
    COUNTED = "counted"
    ESTIMATED = "estimated"  # the worker estimated them (~4 characters a token)
