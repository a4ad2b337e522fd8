"""The off-loop half of logging: a bounded queue that drops instead of blocking, its writer thread,
and a size-capped log file.

The event loop only renders a line and ``put_nowait``s it; every write, flush and rotation
happens in the ``relayline-log-writer`` thread.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
from typing import Any, Final

from prometheus_client import Counter

DROPPED_RECORDS: Final = Counter(
    "relayline_log_records_dropped_total",
    "Log records discarded because the log queue was full or the record could not be rendered.",
)
_CLOSE_TIMEOUT_S: Final = 5.0


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A queue handler that renders in the caller's thread and never blocks on a full queue.

    A record that does not fit, or that fails to render, is dropped and counted both on
    :attr:`dropped` and on the ``relayline_log_records_dropped_total`` metric.
    """

    def __init__(self, log_queue: queue.Queue[Any]) -> None:
        super().__init__(log_queue)
        self._queue: queue.Queue[Any] = log_queue
        self._dropped = 0
        self._dropped_lock = threading.Lock()

    @property
    def dropped(self) -> int:
        """How many records this handler has discarded."""
        return self._dropped

    def emit(self, record: logging.LogRecord) -> None:
        """Render *record* and queue the line, or drop it if the queue is full."""
        # Checked first so an overloaded process does not also spend CPU rendering lines that
        # cannot be queued; put_nowait() below still handles the race with other threads.
        if self._queue.full():
            self._drop()
            return
        try:
            # Only the rendered line is queued: no record copy, nothing mutable crosses threads.
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._drop()

    def handleError(self, record: logging.LogRecord) -> None:
        """Count a record that could not be rendered, without echoing its content."""
        # The stdlib default prints the raw message and arguments to stderr: unredacted.
        self._drop()
        failure = type(sys.exc_info()[1]).__name__
        sys.stderr.write(f"relayline: dropped a log record from {record.name!r}: {failure}\n")

    def _drop(self) -> None:
        with self._dropped_lock:
            self._dropped += 1
        DROPPED_RECORDS.inc()


class LogWriter(logging.handlers.QueueListener):
    """The writer thread, named for thread dumps and bounded in how long shutdown may wait."""

    def __init__(self, log_queue: queue.Queue[Any], target: logging.Handler) -> None:
        super().__init__(log_queue, target)
        self._log_queue = log_queue
        # One record reused for every line: only this thread touches it, and the target
        # handlers read nothing but the message.
        self._carrier = logging.makeLogRecord({"name": "relayline.log_writer", "msg": ""})

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive (still, if :meth:`stop` gave up on it)."""
        return self._thread is not None and self._thread.is_alive()

    def prepare(self, record: Any) -> logging.LogRecord:
        """Wrap a queued line (a ``str``) for the target handler."""
        self._carrier.msg = record
        return self._carrier

    def start(self) -> None:
        """Start the writer thread."""
        super().start()
        if self._thread is not None:
            self._thread.name = "relayline-log-writer"

    def stop(self) -> None:
        """Write out what is queued and end the thread, waiting a bounded time."""
        thread = self._thread
        if thread is None:
            return
        try:
            # Blocking put, unlike the base class: the queue may be full while the writer drains
            # it. None is QueueListener's sentinel.
            self._log_queue.put(None, timeout=_CLOSE_TIMEOUT_S)
        except queue.Full:
            return  # writer stuck (e.g. a hung disk): give up rather than hang shutdown
        thread.join(_CLOSE_TIMEOUT_S)
        if not thread.is_alive():
            self._thread = None


class SizeCappedFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that also caps the size when no backups are kept."""

    def doRollover(self) -> None:
        """Rotate the file, or truncate it when ``backupCount`` is 0."""
        if self.backupCount > 0:
            super().doRollover()
            return
        # The stdlib never rolls over with backupCount=0, letting the file grow forever;
        # truncate instead so log_max_bytes holds.
        if self.stream:
            self.stream.close()
        mode, self.mode = self.mode, "w"
        try:
            self.stream = self._open()
        finally:
            self.mode = mode
