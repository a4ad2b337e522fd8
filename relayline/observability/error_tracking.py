"""Optional error tracking with Sentry (``RELAYLINE_SENTRY_DSN``), for the relay and the worker.

Off unless a DSN is set; only then is ``sentry_sdk`` imported and initialised, by
:func:`init_error_tracking`: the relay from its ASGI lifespan (``relayline.api.app``), the worker
from ``relayline worker`` (``relayline.cli``: the worker package may not import this one).

What becomes an event is what the logs already call an error: every line at ERROR or above
(the relay's ``unhandled_error`` behind a 500, the worker's ``turn_crashed``, a library's
traceback), reported by :func:`report_log_event`, a processor of the logging pipeline
(``relayline.observability.logging``). An event therefore carries what its line carries: the
exception and its stack, the line's name and fields, and ``request_id``, ``correlation_id`` and
``turn_id`` as tags, whether passed to the line or bound in structlog's context variables of
the task that logged it. Lines at INFO and WARNING become breadcrumbs. On the relay the
Starlette/FastAPI integrations add the request (method, URL, headers) to events raised while
serving it, and report an exception escaping a request unlogged; the same exception logged
first is sent once (deduplicated).

Redaction: ``before_send`` and ``before_breadcrumb`` run the logs' :class:`Redactor` (API keys,
tokens, cookies, ``Authorization`` headers, secrets, and chat content unless
``RELAYLINE_LOG_CHAT_EVENTS``) over everything an event holds. Never sent at all: local
variables of stack frames (their reprs would carry message text that no key names), request
bodies, cookies and client IPs (``send_default_pii`` off), the command line (the default
integrations are off: ``relayline worker --secret …``), performance traces and sessions.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog
from pydantic import SecretStr
from structlog.typing import EventDict, WrappedLogger

from relayline import __version__
from relayline.config import Settings
from relayline.observability.redaction import Redactor, redact_text

if TYPE_CHECKING:
    from sentry_sdk.client import BaseClient
    from sentry_sdk.integrations import Integration

__all__ = ["TAG_KEYS", "ErrorTracking", "init_error_tracking", "report_log_event"]

Component = Literal["relay", "worker"]

# Log fields (or structlog context variables) that become tags, to find an event from a
# request id or a turn, and the other way round.
TAG_KEYS: Final = ("request_id", "correlation_id", "turn_id")
# Fields of a log line that are not data: they become the event's own attributes.
_OWN_KEYS: Final = frozenset({"event", "level", "logger", "timestamp", "exc_info", "stack_info"})
# Parts of an event that the SDK writes itself and that hold no data to redact.
_SDK_KEYS: Final = frozenset(
    {
        "event_id",
        "timestamp",
        "start_timestamp",
        "platform",
        "sdk",
        "level",
        "logger",
        "release",
        "environment",
        "server_name",
        "type",
        "transaction_info",
        "debug_meta",
        "modules",
        "_meta",
    }
)
# The SDK's own lines and its HTTP client's (the relay and the worker use httpx): reporting a
# failure to send would only make another.
_TRANSPORT_LOGGERS: Final = ("sentry_sdk", "urllib3")
_EVENT_LEVELS: Final = {"error": "error", "critical": "fatal", "fatal": "fatal"}
_BREADCRUMB_LEVELS: Final = frozenset({"warning", "info"})
SHUTDOWN_TIMEOUT_S: Final = 2.0

_active: _Reporter | None = None
_lock = threading.Lock()
# Set while a line is being reported: anything the SDK logs meanwhile is not reported again.
_reporting: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "relayline_error_reporting", default=False
)


class _Reporter:
    """Turns log lines into events and breadcrumbs, and redacts what the SDK sends."""

    def __init__(self, component: Component, omit_content: bool) -> None:
        self.component = component
        self.redactor = Redactor(omit_content=omit_content)
        self.client: BaseClient | None = None

    # Log lines
    def report(self, event_dict: EventDict) -> None:
        level = event_dict.get("level")
        if level in _EVENT_LEVELS:
            self._capture(event_dict, _EVENT_LEVELS[level])
        elif level in _BREADCRUMB_LEVELS:
            import sentry_sdk

            sentry_sdk.add_breadcrumb(
                type="log",
                category=str(event_dict.get("logger", "")),
                level=level,
                message=str(event_dict.get("event", "")),
                data=_fields(event_dict),
            )

    def _capture(self, event_dict: EventDict, level: str) -> None:
        import sentry_sdk
        from sentry_sdk.utils import event_from_exception

        exc_info = _exc_info(event_dict.get("exc_info"))
        event: dict[str, Any]
        hint: dict[str, Any]
        if exc_info is not None:
            captured, hint = event_from_exception(
                exc_info,
                client_options=sentry_sdk.get_client().options,
                mechanism={"type": "logging", "handled": True},
            )
            event = dict(captured)
        else:
            event, hint = {}, {}
        message = str(event_dict.get("event", ""))
        event["logentry"] = {"message": message, "formatted": message, "params": []}
        event["level"] = level
        event["logger"] = str(event_dict.get("logger", ""))
        event["extra"] = _fields(event_dict)
        event["tags"] = {
            key: str(event_dict[key]) for key in TAG_KEYS if event_dict.get(key) is not None
        }
        sentry_sdk.capture_event(event, hint=hint)  # type: ignore[arg-type]

    # What the SDK sends
    def before_send(self, event: Any, hint: Any) -> Any:
        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = event["tags"] = {}
        # Events the SDK raised itself (an exception escaping a request) carry the context of
        # the task that raised them.
        bound = structlog.contextvars.get_contextvars()
        for key in TAG_KEYS:
            if key not in tags and bound.get(key) is not None:
                tags[key] = str(bound[key])
        tags.setdefault("component", self.component)
        return self.scrub(event)

    def before_breadcrumb(self, crumb: Any, hint: Any) -> Any:
        return self.redactor.redact(crumb)

    def scrub(self, event: dict[str, Any]) -> dict[str, Any]:
        """*event* with secrets (and chat content, unless allowed) removed, as in the logs."""
        for key, value in tuple(event.items()):
            if key in _SDK_KEYS:
                continue
            if isinstance(value, str):
                event[key] = redact_text(value)
            else:
                event[key] = self.redactor.redact(value)
        return event


class ErrorTracking:
    """The process's Sentry client while it runs; :meth:`close` sends what is queued and
    removes it."""

    def __init__(self, reporter: _Reporter) -> None:
        self._reporter = reporter

    def close(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Flush (for at most *timeout* seconds) and de-initialise; later calls do nothing.

        Another client initialised since (a second relay in this process) is left alone."""
        global _active
        import sentry_sdk

        with _lock:
            client, self._reporter.client = self._reporter.client, None
            if _active is self._reporter:
                _active = None
        if client is None:
            return
        client.close(timeout=timeout)
        scope = sentry_sdk.get_global_scope()
        if scope.client is client:
            scope.set_client(None)
            sentry_sdk.get_isolation_scope().clear_breadcrumbs()


def init_error_tracking(
    dsn: SecretStr | None, settings: Settings, *, component: Component
) -> ErrorTracking | None:
    """Initialise Sentry for this process when *dsn* is set; ``None`` (and nothing imported
    or changed) otherwise.

    ``release`` is relayline's version and ``environment`` ``RELAYLINE_ENV``; chat content
    stays out unless ``RELAYLINE_LOG_CHAT_EVENTS``. The relay (*component* ``relay``) gets the
    Starlette/FastAPI integrations; the worker nothing of the web stack.
    """
    global _active
    if dsn is None or not dsn.get_secret_value().strip():
        return None
    import sentry_sdk
    from sentry_sdk.integrations.dedupe import DedupeIntegration

    reporter = _Reporter(component, omit_content=not settings.log_chat_events)
    integrations: list[Integration] = [DedupeIntegration()]
    if component == "relay":
        integrations += _web_integrations()
    with _lock:
        sentry_sdk.init(
            dsn=dsn.get_secret_value().strip(),
            release=f"relayline@{__version__}",
            environment=settings.env,
            # send_default_pii stays at its default, off (setting it is deprecated): no
            # cookies, user or client IP; the SDK's own scrubber runs before ours.
            include_local_variables=False,
            max_request_body_size="never",
            # No performance tracing. None rather than 0: at 0 the SDK still builds a
            # transaction per request and reports each as discarded.
            traces_sample_rate=None,
            auto_session_tracking=False,
            # No argv (a worker's --secret), no http.client/subprocess breadcrumbs, no
            # integrations found by import (httpx, SQLAlchemy, Redis: URLs, SQL and keys):
            # only what is listed here.
            default_integrations=False,
            auto_enabling_integrations=False,
            integrations=integrations,
            in_app_include=["relayline"],
            before_send=reporter.before_send,
            before_breadcrumb=reporter.before_breadcrumb,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        reporter.client = sentry_sdk.get_client()
        _active = reporter
    return ErrorTracking(reporter)


def _web_integrations() -> list[Integration]:
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    # Transactions named by route template, not by path (ids would make each one unique).
    return [
        StarletteIntegration(transaction_style="url", middleware_spans=False),
        FastApiIntegration(transaction_style="url", middleware_spans=False),
    ]


def report_log_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Processor of the logging pipeline: a line at ERROR or above becomes an event (with its
    exception), INFO and WARNING a breadcrumb; nothing happens while error tracking is off.

    Runs in the thread (and task) that logs, before the traceback is formatted as text and
    before the line is redacted (``before_send`` redacts what is sent).
    """
    reporter = _active
    if reporter is None or _reporting.get():
        return event_dict
    name = event_dict.get("logger")
    if isinstance(name, str) and name.startswith(_TRANSPORT_LOGGERS):
        return event_dict
    token = _reporting.set(True)
    try:
        reporter.report(event_dict)
    except Exception:  # noqa: S110 - error tracking must never cost a log line
        pass
    finally:
        _reporting.reset(token)
    return event_dict


def _fields(event_dict: EventDict) -> dict[str, Any]:
    return {
        key: value
        for key, value in event_dict.items()
        if key not in _OWN_KEYS and not key.startswith("_")
    }


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_info(value: object) -> ExcInfo | None:
    """What structlog accepts as ``exc_info`` (True, an exception, a tuple) as a tuple."""
    if value is True:
        current = sys.exc_info()
        return None if current[1] is None else current
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value
    return None
