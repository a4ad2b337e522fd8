"""Structured logging: one redacting pipeline for structlog and stdlib, written off the event loop.

Every record, whether from ``get_logger()`` or a library's stdlib logger (uvicorn, SQLAlchemy),
goes through the same steps in the thread that logs it::

    structlog chain / foreign_pre_chain     level filter, contextvars (request_id), logger name,
                                            level, ISO-8601 UTC timestamp
    ProcessorFormatter                      errors to Sentry (when on), traceback formatting,
                                            Redactor, JSON or console render
    DroppingQueueHandler                    bounded queue; a full queue drops and counts the record
    LogWriter thread                        stderr, a stream, or a size-rotated file

Rendering happens before the record is queued, so the writer thread only does I/O and never
sees live objects that the event loop might still be mutating.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
from types import TracebackType
from typing import IO, Any, Final

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from relayline.config import ConfigError, Settings
from relayline.observability.error_tracking import report_log_event
from relayline.observability.log_writer import (
    DROPPED_RECORDS,
    DroppingQueueHandler,
    LogWriter,
    SizeCappedFileHandler,
)
from relayline.observability.redaction import Redactor

__all__ = ["DROPPED_RECORDS", "LogRuntime", "configure_logging", "get_logger"]

# uvicorn installs its own handlers; take them away so its lines join the common pipeline.
_ADOPTED_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
# The application writes its own access line (with request_id and timing).
_SILENCED_LOGGERS: Final = ("uvicorn.access",)
# At DEBUG these print raw frames and SQL parameters, i.e. chat content that the content filter
# cannot recognise inside free text; they stay at INFO or above.
_PAYLOAD_LOGGERS: Final = ("aiosqlite", "websockets", "httpcore", "hpack")
_LEADING_KEYS: Final = ("timestamp", "level", "logger", "event")

_active: LogRuntime | None = None
_configure_lock = threading.Lock()


class LogRuntime:
    """The running pipeline returned by :func:`configure_logging`."""

    def __init__(
        self,
        handler: DroppingQueueHandler,
        writer: LogWriter,
        target: logging.Handler,
        after_close: IO[str],
    ) -> None:
        self._handler = handler
        self._writer = writer
        self._target = target
        self._after_close = after_close
        self._closed = False
        self._lock = threading.Lock()

    @property
    def dropped(self) -> int:
        """How many records were discarded (queue full or not renderable)."""
        return self._handler.dropped

    def close(self) -> None:
        """Flush queued records and stop the writer thread; later calls do nothing.

        Records logged afterwards (late shutdown messages) are rendered and redacted as before
        but written synchronously to stderr (or the configured stream), not lost.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        root = logging.getLogger()
        # Swap first: a record logged while the queue drains would land behind the sentinel.
        fallback = logging.StreamHandler(self._after_close)
        fallback.setFormatter(self._handler.formatter)
        root.addHandler(fallback)
        root.removeHandler(self._handler)
        self._writer.stop()
        if not self._writer.running:  # a stuck writer holds the target's lock: leave it be
            self._target.close()
        atexit.unregister(self.close)

    def __enter__(self) -> LogRuntime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def configure_logging(settings: Settings, *, stream: IO[str] | None = None) -> LogRuntime:
    """Install the logging pipeline described by *settings* and start its writer thread.

    Output goes to ``settings.log_file`` (rotated at ``log_max_bytes``, keeping
    ``log_backups`` old files) when set, else to *stream* (default: stderr). Lines are JSON
    when ``log_format`` is ``json``, or ``auto`` in production; readable text otherwise.
    Replaces all root handlers and any pipeline installed by an earlier call. Raises
    :class:`ConfigError` when the log file cannot be opened.
    """
    global _active
    with _configure_lock:
        if _active is not None:
            _active.close()
        out = stream if stream is not None else sys.stderr
        # The target keeps the default formatter: the line was rendered before queueing.
        target = _open_target(settings, out)
        log_queue: queue.Queue[Any] = queue.Queue(maxsize=settings.log_queue_size)
        handler = DroppingQueueHandler(log_queue)
        colors = settings.log_file is None and out.isatty()
        handler.setFormatter(_build_formatter(settings, colors=colors))
        writer = LogWriter(log_queue, target)
        _install_stdlib(settings, handler)
        structlog.configure(
            processors=[*_event_chain(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__]),
            wrapper_class=structlog.stdlib.BoundLogger,
            # No caching: a logger used before configure_logging() would keep the default,
            # unredacted configuration for the life of the process.
            cache_logger_on_first_use=False,
        )
        writer.start()
        runtime = LogRuntime(handler, writer, target, out)
        atexit.register(runtime.close)
        _active = runtime
        return runtime


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger named *name* (default: the calling module)."""
    # With no argument the factory names the logger after the first frame outside structlog
    # and this module; passing None through would name it "root".
    logger: structlog.stdlib.BoundLogger = (
        structlog.stdlib.get_logger() if name is None else structlog.stdlib.get_logger(name)
    )
    return logger


def _event_chain() -> list[Processor]:
    # filter_by_level goes before merge_contextvars only because it is the cheapest way out for
    # a disabled level; context still comes before everything that enriches the event.
    return [
        structlog.stdlib.filter_by_level,
        *_context_chain(),
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
    ]


def _context_chain() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _build_formatter(settings: Settings, *, colors: bool) -> structlog.stdlib.ProcessorFormatter:
    rendering: list[Processor]
    if settings.log_format == "json" or (settings.log_format == "auto" and settings.is_production):
        rendering = [_lead_with_essentials, structlog.processors.JSONRenderer()]
    else:
        # Plain tracebacks: the rich formatter prints local variables, which redaction of the
        # already-formatted text would never see.
        rendering = [
            structlog.dev.ConsoleRenderer(
                colors=colors, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_context_chain(), structlog.stdlib.ExtraAdder(), _drop_color_message],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Errors to Sentry while RELAYLINE_SENTRY_DSN is set: it needs the exception
            # itself, so it goes before the traceback is text; it redacts what it sends.
            report_log_event,
            # Tracebacks become text here so that the redactor sees them.
            structlog.processors.format_exc_info,
            Redactor(omit_content=not settings.log_chat_events),
            *rendering,
        ],
    )


def _drop_color_message(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    # uvicorn adds an ANSI-coloured duplicate of its message as ``extra``.
    event_dict.pop("color_message", None)
    return event_dict


def _lead_with_essentials(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    # JSON keeps insertion order; people reading raw lines look for these first.
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _open_target(settings: Settings, out: IO[str]) -> logging.Handler:
    if settings.log_file is None:
        return logging.StreamHandler(out)
    try:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        return SizeCappedFileHandler(
            settings.log_file,
            maxBytes=settings.log_max_bytes,
            backupCount=settings.log_backups,
            encoding="utf-8",
        )
    except OSError as exc:
        raise ConfigError(f"RELAYLINE_LOG_FILE: cannot open {settings.log_file}: {exc}") from None


def _install_stdlib(settings: Settings, handler: logging.Handler) -> None:
    root = logging.getLogger()
    # Any other root handler would write the same records unredacted.
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in _ADOPTED_LOGGERS:
        adopted = logging.getLogger(name)
        adopted.handlers.clear()
        adopted.setLevel(logging.NOTSET)
        adopted.propagate = True
    for name in _SILENCED_LOGGERS:
        silenced = logging.getLogger(name)
        silenced.handlers = [logging.NullHandler()]
        silenced.propagate = False
        silenced.disabled = True
    floor = max(logging.INFO, root.level)
    for name in _PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(floor)
