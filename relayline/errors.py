"""Errors that reach a client, each with a stable ``code``.

Hierarchy::

    RelaylineError                      base; ``code``, ``status``, ``detail``
    ├── ValidationFailed                422 validation_error
    ├── PayloadTooLarge                 413 payload_too_large
    ├── RateLimited                     429 rate_limited (``retry_after`` seconds),
    │                                       or too_many_connections for connection caps
    ├── Unauthorized                    401 unauthorized (or a more specific code)
    ├── Forbidden                       403 forbidden
    ├── NotFound                        404 not_found
    ├── Conflict                        409 conflict
    ├── Unavailable                     503 unavailable (``retry_after_s`` when known)
    ├── UpstreamFailed                  502/503/504, a completion's failure category
    └── InternalError                   500 internal (detail never carries the cause)

The worker's errors are its own (:class:`relayline.worker.llm.base.LLMError`, whose ``category``
is what ``turn.failed`` reports): the worker imports nothing of the relay.

HTTP handlers render any of them as ``{"error": {"code", "detail", "request_id"}}``;
the WebSocket hub renders them as ``error`` frames with the same ``code``.
"""

from __future__ import annotations

from relayline.protocol.names import ErrorCode


class RelaylineError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    code: str = ErrorCode.INTERNAL

    def __init__(self, detail: str = "", *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail or self.__class__.default_detail()
        if code is not None:
            self.code = code

    @classmethod
    def default_detail(cls) -> str:
        return cls.code.replace("_", " ")

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code!r}, status={self.status}, detail={self.detail!r})"


class ValidationFailed(RelaylineError):
    status = 422
    code = ErrorCode.VALIDATION_ERROR


class PayloadTooLarge(RelaylineError):
    status = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE


class RateLimited(RelaylineError):
    status = 429
    code = ErrorCode.RATE_LIMITED

    def __init__(self, detail: str = "", *, retry_after: int = 1, code: str | None = None) -> None:
        # ``code`` lets a related refusal (``too_many_connections``) keep the 429 status and the
        # ``Retry-After`` handling while telling the client what was exhausted.
        super().__init__(detail or "rate limit exceeded", code=code)
        self.retry_after = max(1, int(retry_after))


class Unauthorized(RelaylineError):
    status = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(RelaylineError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(RelaylineError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(RelaylineError):
    status = 409
    code = ErrorCode.CONFLICT


class Unavailable(RelaylineError):
    status = 503
    code = ErrorCode.UNAVAILABLE

    def __init__(
        self, detail: str = "", *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(detail, code=code)
        # Seconds after which a retry may succeed (``Retry-After``); None: not said.
        self.retry_after_s = retry_after


class UpstreamFailed(RelaylineError):
    """The model behind a completion failed it (``code``: the turn's failure category)."""

    status = 502
    code = ErrorCode.INTERNAL

    def __init__(self, detail: str = "", *, code: str | None = None, status: int = 502) -> None:
        super().__init__(detail, code=code)
        self.status = status


class InternalError(RelaylineError):
    status = 500
    code = ErrorCode.INTERNAL
