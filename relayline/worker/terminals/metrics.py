"""The worker's terminal metrics (default registry, served with the worker's other metrics).

Labels are bounded: ``reason`` comes from :class:`relayline.protocol.names.TermExitReason` or
the fixed set of input refusals below.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from relayline.protocol.names import TermExitReason

INPUT_REFUSALS = ("payload_too_large", "invalid_utf8", "backlog", "not_running")

SESSIONS_OPEN = Gauge("relayline_worker_terminal_sessions", "Terminal sessions running now")
OUTPUT_BYTES = Counter(
    "relayline_worker_terminal_output_bytes_total", "Bytes terminal programs printed"
)
INPUT_BYTES = Counter(
    "relayline_worker_terminal_input_bytes_total", "Bytes typed into terminal programs"
)
INPUT_REFUSED = Counter(
    "relayline_worker_terminal_input_refused_total",
    "term.input frames refused, by reason (payload_too_large, invalid_utf8, backlog: the "
    "program is not reading its input, not_running)",
    ["reason"],
)
KILLED_AFTER_GRACE = Counter(
    "relayline_worker_terminal_kills_after_grace_total",
    "Terminal sessions SIGKILLed because something in them outlived the grace period",
)
EXITS = Counter(
    "relayline_worker_terminal_exits_total",
    "Terminal sessions ended, by reason (exited, terminated, idle, lifetime, shutdown, "
    "detached, failed)",
    ["reason"],
)
READ_PAUSES = Counter(
    "relayline_worker_terminal_read_pauses_total",
    "Times a terminal stopped reading its PTY because frames to the relay were backed up",
)

for _reason in TermExitReason:
    EXITS.labels(_reason.value)
for _refusal in INPUT_REFUSALS:
    INPUT_REFUSED.labels(_refusal)
