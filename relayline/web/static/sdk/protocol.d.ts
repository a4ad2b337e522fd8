// Generated from relayline/protocol by `python -m relayline.protocol.jsmodule`.
// Do not edit: change the Python catalogue and regenerate.

export declare const CLOSE: Readonly<{
  "NORMAL": 1000;
  "PROTOCOL_ERROR": 1002;
  "INVALID_DATA": 1007;
  "TOO_BIG": 1009;
  "INTERNAL": 1011;
  "RESTARTING": 1012;
  "SLOW": 4009;
  "UNAUTHENTICATED": 4401;
  "FORBIDDEN": 4403;
  "HEARTBEAT_TIMEOUT": 4408;
  "RATE_LIMITED": 4429;
}>;
export declare const CLOSE_ACTIONS: Readonly<{
  "1000": "stop";
  "1002": "stop";
  "1007": "stop";
  "1009": "backoff";
  "1011": "backoff";
  "1012": "jittered";
  "4009": "now";
  "4401": "new_token";
  "4403": "stop";
  "4408": "now";
  "4429": "backoff";
}>;
export declare const DEFAULT_CLOSE_ACTION: "backoff";
export declare const RESTART_SPREAD_MS: 3000;
export declare const OP: Readonly<{
  "AUTH": "auth";
  "SUBSCRIBE": "subscribe";
  "UNSUBSCRIBE": "unsubscribe";
  "SEND": "send";
  "CANCEL": "cancel";
  "APPROVE": "approve";
  "PING": "ping";
  "TERM_INPUT": "term.input";
  "TERM_RESIZE": "term.resize";
}>;
export declare const EVENT: Readonly<{
  "MESSAGE_CREATED": "message.created";
  "MESSAGE_DELTA": "message.delta";
  "MESSAGE_COMPLETED": "message.completed";
  "TURN_QUEUED": "turn.queued";
  "TURN_STARTED": "turn.started";
  "TURN_RETRYING": "turn.retrying";
  "TURN_FAILED": "turn.failed";
  "TURN_CANCELLED": "turn.cancelled";
  "TOOL_APPROVAL_REQUESTED": "tool.approval_requested";
  "TOOL_APPROVAL_RESOLVED": "tool.approval_resolved";
  "WORKER_STATE": "worker.state";
  "TERM_OUTPUT": "term.output";
  "TERM_STATE": "term.state";
  "TERM_EXITED": "term.exited";
  "EVENTS_MISSED": "events.missed";
}>;
export declare const ERROR_CODE: Readonly<{
  "VALIDATION_ERROR": "validation_error";
  "INVALID_JSON": "invalid_json";
  "UNKNOWN_OP": "unknown_op";
  "UNKNOWN_TYPE": "unknown_type";
  "BAD_REQUEST": "bad_request";
  "REQUEST_TIMEOUT": "request_timeout";
  "UPGRADE_REQUIRED": "upgrade_required";
  "HEADERS_TOO_LARGE": "headers_too_large";
  "PAYLOAD_TOO_LARGE": "payload_too_large";
  "UNAUTHORIZED": "unauthorized";
  "FORBIDDEN": "forbidden";
  "NOT_FOUND": "not_found";
  "CONFLICT": "conflict";
  "RATE_LIMITED": "rate_limited";
  "TOO_MANY_CONNECTIONS": "too_many_connections";
  "UNAVAILABLE": "unavailable";
  "INTERNAL": "internal";
  "STALE_ATTEMPT": "stale_attempt";
  "SIGNATURE_INVALID": "signature_invalid";
  "UNKNOWN_KEY": "unknown_key";
  "TIMESTAMP_OUT_OF_WINDOW": "timestamp_out_of_window";
  "NONCE_REUSED": "nonce_reused";
  "NO_TERMINAL_WORKER": "no_terminal_worker";
  "UNKNOWN_PROGRAM": "unknown_program";
  "TOO_MANY_TERMINALS": "too_many_terminals";
  "INVALID_UTF8": "invalid_utf8";
  "READ_ONLY": "read_only";
  "CWD_NOT_ALLOWED": "cwd_not_allowed";
  "TERMINAL_EXITED": "terminal_exited";
  "UNKNOWN_MODEL": "unknown_model";
  "NO_WORKER": "no_worker";
  "TOO_MANY_COMPLETIONS": "too_many_completions";
}>;
export declare const FAILURE_CATEGORY: Readonly<{
  "TIMEOUT": "timeout";
  "UPSTREAM_4XX": "upstream_4xx";
  "UPSTREAM_5XX": "upstream_5xx";
  "CIRCUIT_OPEN": "circuit_open";
  "TOOL_ERROR": "tool_error";
  "INTERNAL": "internal";
  "INCOMPLETE": "incomplete";
}>;
export declare const FINISH_REASON: Readonly<{
  "STOP": "stop";
  "LENGTH": "length";
  "CONTENT_FILTER": "content_filter";
  "TOOL_CALLS": "tool_calls";
}>;
export declare const TERM_EXIT_REASON: Readonly<{
  "EXITED": "exited";
  "TERMINATED": "terminated";
  "IDLE": "idle";
  "LIFETIME": "lifetime";
  "SHUTDOWN": "shutdown";
  "DETACHED": "detached";
  "LOST": "lost";
  "FAILED": "failed";
}>;
export declare const LIMITS: Readonly<{
  "maxMessageChars": 16000;
  "wsMaxFrameBytes": 65536;
  "maxJsonDepth": 64;
  "termInputMaxBytes": 10240;
  "termMinSize": 1;
  "termMaxSize": 500;
}>;
